#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: s3_backup_lifecycle
short_description: Derive a backup bucket's lifecycle, lock, encryption and replication from the retention policy
version_added: 0.2.0
description:
  - From one retention policy (how long any point in time must restore fast, how often full backups are taken,
    how long anything is kept, which storage class old copies go to) computes and applies, idempotently, the
    bucket configuration for one backup repository (C(<prefix>/backup/), C(<prefix>/wal/), C(<prefix>/logical/)).
  - Lifecycle rules per prefix; transitions to an archive class only once an object can no longer be needed for
    a restore inside the PITR window, expiration only once it can no longer be needed inside the retention period,
    noncurrent-version expiration, and abort of incomplete multipart uploads.
  - Refuses a policy that would break that guarantee (for example WAL expiring before the oldest kept base backup
    needs it), naming the numbers that conflict. The bucket's whole rule set, including rules this module does not
    own, is run through a simulator before anything is written.
  - Also versioning, Object Lock default retention (on buckets created with Object Lock), default encryption
    (SSE-S3 or SSE-KMS), a bucket policy denying unencrypted uploads and non-TLS access, and replication to other
    regions' buckets.
  - Lifecycle rules whose ID does not start with O(id_prefix), and policy statements whose Sid does not start with
    C(ImmersiverseDr), are left untouched.
  - Everything is validated and the bucket read before the first change.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
attributes:
  check_mode:
    support: full
    details: Reads the bucket, reports what would change (C(changes), C(diff)), writes nothing.
  diff_mode:
    support: full
    details: Before and after of every managed section (only rules and statements this module owns).
  platform:
    details: Runs on the controller or any host with boto3.
options:
  bucket:
    description: The bucket that holds the repository.
    type: str
    required: true
  prefix:
    description:
      - Root of the repository inside the bucket (C(dr_s3_prefix)); empty means the bucket holds one repository
        and every rule whose ID starts with O(id_prefix) is owned by this call.
    type: str
    default: ""
  endpoint_url:
    description: S3 endpoint; empty means AWS's.
    type: str
  region_name:
    description: S3 region.
    type: str
    default: us-east-1
  access_key:
    description: Access key id; empty uses the usual AWS credential chain.
    type: str
  secret_key:
    description: Secret key; never logged.
    type: str
  policy:
    description: The retention policy the bucket's rules are derived from.
    type: dict
    required: true
    suboptions:
      pitr_window_days:
        description: Any point in time in the last this many days restores without touching an archive class.
        type: int
        required: true
      full_interval_days:
        description: A full base backup is taken at least every this many days (the schedule's worst case).
        type: int
        required: true
      retention_days:
        description: Any point in time in the last this many days stays restorable (perhaps from an archive class).
        type: int
        required: true
      archive_storage_class:
        description:
          - Storage class old copies move to (C(GLACIER), C(DEEP_ARCHIVE), C(GLACIER_IR), C(STANDARD_IA),
            C(ONEZONE_IA), C(INTELLIGENT_TIERING)); empty means never transition.
        type: str
        default: GLACIER
      archive_after_days:
        description:
          - Age at which base backups and WAL move to O(policy.archive_storage_class). Default and minimum
            O(policy.pitr_window_days) + O(policy.full_interval_days) + O(policy.margin_days).
        type: int
      backup_expire_days:
        description:
          - Age at which base backups expire. Default and minimum O(policy.retention_days) +
            O(policy.full_interval_days) + O(policy.margin_days).
        type: int
      wal_expire_days:
        description: Age at which WAL expires. Default O(policy.backup_expire_days), which is also its minimum.
        type: int
      logical_fast_days:
        description: Age before which logical dumps are not archived. Default O(policy.pitr_window_days).
        type: int
      logical_retention_days:
        description: Age at which logical dumps expire. Default O(policy.retention_days).
        type: int
      noncurrent_version_days:
        description: Days a replaced or deleted object version is kept (versioned bucket).
        type: int
        default: 7
      abort_incomplete_multipart_days:
        description: Days after which an unfinished multipart upload is aborted.
        type: int
        default: 2
      margin_days:
        description: Added to every derived age for a backup's own duration and schedule slip.
        type: int
        default: 1
  versioning:
    description: Turn versioning on (needed for noncurrent-version rules, Object Lock and replication). C(false)
      leaves versioning as it is.
    type: bool
    default: true
  object_lock:
    description:
      - Object Lock default retention for new object versions. The bucket must have been created with Object Lock;
        otherwise the module fails before changing anything.
    type: dict
    suboptions:
      mode:
        description: C(GOVERNANCE) (users with s3:BypassGovernanceRetention can still delete) or C(COMPLIANCE)
          (nobody can, until the date passes).
        type: str
        required: true
        choices: [GOVERNANCE, COMPLIANCE]
      days:
        description: Days each new version is locked.
        type: int
        required: true
  encryption:
    description: Default encryption of new objects (SSE-S3 unless told otherwise).
    type: dict
    default: {}
    suboptions:
      sse_algorithm:
        description:
          - C(AES256) (SSE-S3) or C(aws:kms) (SSE-KMS).
          - C(none) leaves the bucket's default encryption as it is, for servers without default bucket encryption
            (Ceph RGW 16.2 refuses C(PutBucketEncryption)). O(deny_unencrypted_uploads) then cannot be used.
        type: str
        default: AES256
        choices: [AES256, "aws:kms", none]
        version_added: 0.10.0
      kms_key_id:
        description: KMS key id, ARN or alias; required with C(aws:kms).
        type: str
      bucket_key_enabled:
        description: Use an S3 Bucket Key (fewer KMS calls).
        type: bool
        default: false
  deny_insecure_transport:
    description:
      - Bucket policy statement denying every request not made over TLS. Refused when O(endpoint_url) is plain
        C(http://), since it would lock out the endpoint in use.
    type: bool
    default: true
  deny_unencrypted_uploads:
    description:
      - Bucket policy statements denying uploads that do not ask for O(encryption.sse_algorithm) in the
        C(x-amz-server-side-encryption) header. Needs O(encryption).
    type: bool
    default: true
  replication:
    description: Replicate the repository to other regions' buckets (needs versioning on both sides).
    type: dict
    suboptions:
      role_arn:
        description: IAM role S3 replicates as.
        type: str
        required: true
      destinations:
        description: Destination buckets.
        type: list
        elements: dict
        required: true
        suboptions:
          bucket:
            description: Bucket name or ARN.
            type: str
            required: true
          storage_class:
            description: Storage class of the replicas; default the source object's.
            type: str
  id_prefix:
    description: Prefix of the lifecycle and replication rule IDs this module owns.
    type: str
    default: immersiverse-dr-
requirements:
  - boto3 on the host that runs the module (usually the controller)
notes:
  - Test endpoints such as moto store lifecycle and replication configuration but never run them; the guarantee is
    proven by the collection's lifecycle simulator (see docs/s3-lifecycle.md).
seealso:
  - name: S3 lifecycle configuration
    description: How S3 counts object age and resolves conflicting rules.
    link: https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-configuration-examples.html
  - name: PostgreSQL continuous archiving and PITR
    description: Why a restore needs the base backup that precedes the target and all WAL after it.
    link: https://www.postgresql.org/docs/current/continuous-archiving.html
"""

EXAMPLES = r"""
- name: Lifecycle, lock, encryption and TLS-only policy for the primary region's bucket
  immersiverse.dr.s3_backup_lifecycle:
    bucket: "{{ dr_s3_bucket }}"
    prefix: "{{ dr_s3_prefix }}"
    endpoint_url: "{{ dr_s3_endpoint_url | default(omit) }}"
    access_key: "{{ dr_s3_access_key }}"
    secret_key: "{{ dr_s3_secret_key }}"
    policy:
      pitr_window_days: 14
      full_interval_days: 7
      retention_days: 120
      archive_storage_class: GLACIER
    object_lock:
      mode: COMPLIANCE
      days: 30
    encryption:
      sse_algorithm: aws:kms
      kms_key_id: alias/immersiverse-dr
  delegate_to: localhost
  no_log: true
  register: lifecycle
"""

RETURN = r"""
changed:
  description: Whether any managed section of the bucket differed (and, outside check mode, was changed).
  returned: always
  type: bool
changes:
  description: >-
    Sections changed (or that would change in check mode), in the order applied; any of versioning,
    lifecycle_rules, encryption, object_lock, policy_statements, replication.
  returned: always
  type: list
  elements: str
  sample: [versioning, lifecycle_rules]
bucket:
  description: The bucket.
  returned: always
  type: str
prefix:
  description: The repository root the rules cover, with a trailing slash (empty for the whole bucket).
  returned: always
  type: str
  sample: auth-db/
plan:
  description:
    - The ages derived from the policy, per prefix kind (backup, wal, logical) - C(fast_days) and C(keep_days) (how
      old an object may be and still be needed fast / at all), C(archive_after_days) and C(expire_days) (what the
      rules say) - and the policy's own numbers.
  returned: always
  type: dict
  sample: {"backup": {"fast_days": 22, "keep_days": 128, "archive_after_days": 22, "expire_days": 128}}
lifecycle_rules:
  description: The lifecycle rules this module owns for the repository, as sent to S3.
  returned: always
  type: list
  elements: dict
foreign_lifecycle_rules:
  description: IDs of the bucket's lifecycle rules left untouched (not owned).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import bucket as s3policy_bucket

try:
    import boto3

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = exc


def run_module(module):
    p = module.params
    client = boto3.client(
        "s3", endpoint_url=p["endpoint_url"] or None, region_name=p["region_name"],
        aws_access_key_id=p["access_key"] or None, aws_secret_access_key=p["secret_key"] or None,
    )
    spec = {key: p[key] for key in ("bucket", "prefix", "policy", "versioning", "object_lock", "encryption",
                                    "deny_insecure_transport", "deny_unencrypted_uploads", "replication",
                                    "id_prefix", "endpoint_url")}
    if (spec["encryption"] or {}).get("sse_algorithm") == "none":
        if spec["encryption"].get("kms_key_id"):
            module.fail_json(msg="encryption.kms_key_id is only used with sse_algorithm aws:kms, not none")
        spec["encryption"] = None  # default encryption left as it is
    return s3policy_bucket.reconcile(client, spec, check_mode=module.check_mode)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            bucket=dict(type="str", required=True),
            prefix=dict(type="str", default=""),
            endpoint_url=dict(type="str"),
            region_name=dict(type="str", default="us-east-1"),
            access_key=dict(type="str", no_log=True),
            secret_key=dict(type="str", no_log=True),
            policy=dict(type="dict", required=True, options=dict(
                pitr_window_days=dict(type="int", required=True),
                full_interval_days=dict(type="int", required=True),
                retention_days=dict(type="int", required=True),
                archive_storage_class=dict(type="str", default="GLACIER"),
                archive_after_days=dict(type="int"),
                backup_expire_days=dict(type="int"),
                wal_expire_days=dict(type="int"),
                logical_fast_days=dict(type="int"),
                logical_retention_days=dict(type="int"),
                noncurrent_version_days=dict(type="int", default=7),
                abort_incomplete_multipart_days=dict(type="int", default=2),
                margin_days=dict(type="int", default=1),
            )),
            versioning=dict(type="bool", default=True),
            object_lock=dict(type="dict", options=dict(
                mode=dict(type="str", required=True, choices=["GOVERNANCE", "COMPLIANCE"]),
                days=dict(type="int", required=True),
            )),
            encryption=dict(type="dict", default={}, options=dict(
                sse_algorithm=dict(type="str", default="AES256", choices=["AES256", "aws:kms", "none"]),
                kms_key_id=dict(type="str"),
                bucket_key_enabled=dict(type="bool", default=False),
            )),
            deny_insecure_transport=dict(type="bool", default=True),
            deny_unencrypted_uploads=dict(type="bool", default=True),
            replication=dict(type="dict", options=dict(
                role_arn=dict(type="str", required=True),
                destinations=dict(type="list", elements="dict", required=True, options=dict(
                    bucket=dict(type="str", required=True),
                    storage_class=dict(type="str"),
                )),
            )),
            id_prefix=dict(type="str", default="immersiverse-dr-"),
        ),
        supports_check_mode=True,
    )
    if not HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3"), exception=str(BOTO3_IMPORT_ERROR))
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc), changed=False)
    diff = result.pop("diff")
    # Allowed but probably unintended choices (early-deletion fees, short locks) surface as Ansible warnings.
    for warning in result.pop("warnings"):
        module.warn(warning)
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
