# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A repository from its settings (the ``repository`` option every module takes, the dict the region_repository
filter builds): validated, then opened as local or S3.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import s3 as repo_s3


def unavailable_errors(*more):
    """What a repository that is down, unreachable or unwritable raises: RepositoryError, OSError (a local
    directory), and botocore's own errors once boto3 is loaded (a body read that stalls or breaks), with ``more``
    exception classes. For ``except``."""
    found = (repo_base.RepositoryError, OSError) + tuple(more)
    if repo_s3.botocore is not None:
        found += (repo_s3.botocore.exceptions.BotoCoreError,)
    return found


# -- construction from module / config parameters --------------------------------------------------------------------
def repository_argument_spec():
    """The ``repository`` option every backup module shares (see doc_fragments/repository.py)."""
    return dict(
        type=dict(type="str", default="s3", choices=["s3", "local"]),
        name=dict(type="str", default=""),
        path=dict(type="path"),
        bucket=dict(type="str"),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(type="str"),
        region=dict(type="str"),
        access_key=dict(type="str", no_log=True),
        secret_key=dict(type="str", no_log=True),
        session_token=dict(type="str", no_log=True),
        sse=dict(type="str", choices=["none", "AES256", "aws:kms"]),
        sse_kms_key_id=dict(type="str", no_log=False),
        storage_class=dict(type="str"),
        tags=dict(type="dict"),
        part_size_mb=dict(type="int", default=16),
        concurrency=dict(type="int", default=4),
        max_attempts=dict(type="int", default=5),
        validate_certs=dict(type="bool", default=True),
        ca_bundle=dict(type="path"),
        create_check=dict(type="str", default="versions", choices=["versions", "header"]),
    )


def open_repository(spec):
    """A Repository from a ``repository`` dict (module option, CLI config)."""
    spec = dict(spec or {})
    kind = spec.get("type") or ("local" if spec.get("path") and not spec.get("bucket") else "s3")
    name = spec.get("name") or ""
    if name:
        repo_base.validate_name(name, "repository.name")
    if kind == "local":
        return repo_local.LocalRepository(spec.get("path"), name=name)
    if kind == "s3":
        return repo_s3.S3Repository(
            spec.get("bucket"), prefix=spec.get("prefix") or "", endpoint_url=spec.get("endpoint_url"),
            region=spec.get("region"), access_key=spec.get("access_key"), secret_key=spec.get("secret_key"),
            session_token=spec.get("session_token"), sse=spec.get("sse"),
            sse_kms_key_id=spec.get("sse_kms_key_id"), storage_class=spec.get("storage_class"),
            tags=spec.get("tags"), part_size_mb=spec.get("part_size_mb") or 16,
            concurrency=spec.get("concurrency") or 4,
            max_attempts=5 if spec.get("max_attempts") is None else spec["max_attempts"],
            validate_certs=spec.get("validate_certs", True), ca_bundle=spec.get("ca_bundle"), name=name,
            create_check=spec.get("create_check") or "versions",
            # not module options: the WAL engine's configuration sets them (a streaming standby's fetch)
            connect_timeout=spec.get("connect_timeout") or 5, read_timeout=spec.get("read_timeout") or 60)
    raise ValueError("repository.type must be s3 or local, got %r" % (kind,))
