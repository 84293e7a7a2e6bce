"""The lab's S3, as the controller reaches it: each region's Ceph RADOS Gateway on its loopback port, with the
region's own keys (``.lab/secrets/s3-<region>.json``, written by ``scripts/lab.sh up``)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REGIONS = {"primary": 1, "secondary": 2, "tertiary": 3}
PREFIX = "auth-db"


def endpoint(region: str) -> str:
    return f"http://127.0.0.1:{REGIONS[region]}9000"


def bucket(region: str) -> str:
    return f"immersiverse-dr-{region}"


def credentials(region: str) -> dict[str, str]:
    """{"access_key", "secret_key"} of ``region``'s S3 user."""
    path = REPO / ".lab" / "secrets" / f"s3-{region}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path} is missing: the lab is not up (scripts/lab.sh up writes it)") from None


def client(region: str, **config):
    import boto3
    from botocore.config import Config

    creds = credentials(region)
    return boto3.client("s3", endpoint_url=endpoint(region), region_name="us-east-1",
                        aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
                        config=Config(**config) if config else None)


def repository(region: str, prefix: str = PREFIX) -> dict:
    """The region's repository as the collection's engine takes it (type s3)."""
    creds = credentials(region)
    return {"type": "s3", "name": region, "bucket": bucket(region), "prefix": prefix, "endpoint_url": endpoint(region),
            "region": "us-east-1", **creds}
