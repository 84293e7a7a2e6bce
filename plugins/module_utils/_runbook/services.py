# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health of a region's services besides PostgreSQL: its S3 bucket, Redis, Kafka broker and Kubernetes app.

Each check returns {"ok": bool, "latency_ms": float, ...details} or {"ok": False, "error": "..."}; a check never
raises, so one dead service does not hide the state of the others. Client libraries are imported lazily: a
check whose library is missing says which one to install.
"""

from __future__ import annotations

import time


def _timed(fn):
    start = time.monotonic()
    try:
        details = fn() or {}
        details.setdefault("ok", True)
    except ImportError as exc:
        details = {"ok": False, "error": "missing Python library on the controller: %s" % exc.name}
    except Exception as exc:  # noqa: BLE001 - every failure becomes data, by design
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        details = {"ok": False, "error": "%s: %s" % (exc.__class__.__name__, text)}
    details["latency_ms"] = round((time.monotonic() - start) * 1000.0, 1)
    return details


def check_s3(endpoint_url, bucket, region_name="us-east-1", access_key=None, secret_key=None, timeout=5):
    def run():
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region_name,
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
            config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
        )
        client.head_bucket(Bucket=bucket)
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "Disabled")
        return {"bucket": bucket, "versioning": versioning}
    return _timed(run)


def check_redis(url, timeout=5, password=None):
    def run():
        import redis

        extra = {"password": password} if password else {}
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, **extra)
        try:
            client.ping()
            info = client.info("replication")
            return {"role": info.get("role"), "connected_slaves": info.get("connected_slaves", 0)}
        finally:
            client.close()
    return _timed(run)


def check_kafka(bootstrap, timeout=5):
    def run():
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout * 1000,
                                 client_id="immersiverse.dr")
        try:
            brokers = admin.describe_cluster().get("brokers", [])
            topics = sorted(admin.list_topics())
            return {"brokers": len(brokers), "topics": topics}
        finally:
            admin.close()
    return _timed(run)


def check_kubernetes(host, namespace, deployment, api_key="", verify_ssl=True, timeout=5):
    def run():
        from kubernetes import client as k8s

        cfg = k8s.Configuration()
        cfg.host = host
        cfg.verify_ssl = verify_ssl
        if api_key:
            cfg.api_key = {"authorization": "Bearer " + api_key}
        with k8s.ApiClient(cfg) as api:
            dep = k8s.AppsV1Api(api).read_namespaced_deployment(deployment, namespace, _request_timeout=timeout)
            return {"deployment": deployment, "namespace": namespace, "replicas": dep.spec.replicas}
    return _timed(run)
