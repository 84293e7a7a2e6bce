# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # A backup repository's keys, documented once per option that takes one: Ansible reads doc fragments as
    # literal strings, so the three copies below cannot share text. tests/unit/plugins/doc_fragments checks that
    # each copy documents exactly the keys of _repository.repository_argument_spec().

    DOCUMENTATION = r"""
options:
  repository:
    description: The backup repository to use (this region's).
    type: dict
    required: true
    suboptions:
      type:
        description: C(s3) (AWS, MinIO, Ceph, any S3-compatible endpoint) or C(local) (a directory).
        type: str
        default: s3
        choices: [s3, local]
      name:
        description: What reports call this repository, usually the region (C(primary)).
        type: str
        default: ''
      path:
        description: Absolute directory of a C(local) repository.
        type: path
      bucket:
        description: The S3 bucket.
        type: str
      prefix:
        description: Where the repository starts inside the bucket (C(auth-db)); backups go under C(<prefix>/backup/),
          WAL under C(<prefix>/wal/), logical dumps under C(<prefix>/logical/).
        type: str
        default: ''
      endpoint_url:
        description: The S3 endpoint for MinIO, Ceph or a local stand-in; omit for AWS.
        type: str
      region:
        description: The bucket's region.
        type: str
      access_key:
        description: S3 access key. Omit to use the environment or an instance profile. Never logged.
        type: str
      secret_key:
        description: S3 secret key. Never logged.
        type: str
      session_token:
        description: S3 session token for temporary credentials. Never logged.
        type: str
      sse:
        description: Server-side encryption of every object written.
        type: str
        choices: [none, AES256, 'aws:kms']
      sse_kms_key_id:
        description: The KMS key for C(sse=aws:kms).
        type: str
      storage_class:
        description: Storage class of new objects (C(STANDARD), C(STANDARD_IA), ...). Archive tiers belong in the
          bucket's lifecycle rules (M(immersiverse.dr.s3_backup_lifecycle)), not here.
        type: str
      tags:
        description: Object tags for every object written.
        type: dict
      part_size_mb:
        description: Multipart part size in MiB (at least 5).
        type: int
        default: 16
      concurrency:
        description: Parts or files uploaded in parallel.
        type: int
        default: 4
      max_attempts:
        description: Attempts per S3 call (exponential back-off with jitter between them).
        type: int
        default: 5
      validate_certs:
        description: Verify the endpoint's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: A CA bundle to verify the endpoint's certificate with.
        type: path
      create_check:
        description:
          - How a create-only write (a WAL segment, the runbook lock) to a versioned bucket is proven first.
          - C(versions) lists the key's versions after the write (needs C(s3:ListBucketVersions)); a second writer
            takes its version back. Ceph RGW 16.2 needs it, since it ignores C(If-None-Match) on versioned buckets.
          - C(header) trusts C(If-None-Match), for servers that honour it on versioned buckets (AWS S3); one
            request fewer per write.
        type: str
        choices: [versions, header]
        default: versions
        version_added: 0.10.0
requirements:
  - boto3 for S3 repositories, on the host the module runs on
"""

    OFFSITE = r"""
options:
  offsite:
    description:
      - Other regions' repositories every new backup is copied to, file by file with checksums, catalog record
        last. A server-side copy is used where both repositories are on the same S3 endpoint.
    type: list
    elements: dict
    default: []
    suboptions:
      type:
        description: C(s3) (AWS, MinIO, Ceph, any S3-compatible endpoint) or C(local) (a directory).
        type: str
        default: s3
        choices: [s3, local]
      name:
        description: What reports call this repository, usually the region (C(primary)).
        type: str
        default: ''
      path:
        description: Absolute directory of a C(local) repository.
        type: path
      bucket:
        description: The S3 bucket.
        type: str
      prefix:
        description: Where the repository starts inside the bucket (C(auth-db)); backups go under C(<prefix>/backup/),
          WAL under C(<prefix>/wal/), logical dumps under C(<prefix>/logical/).
        type: str
        default: ''
      endpoint_url:
        description: The S3 endpoint for MinIO, Ceph or a local stand-in; omit for AWS.
        type: str
      region:
        description: The bucket's region.
        type: str
      access_key:
        description: S3 access key. Omit to use the environment or an instance profile. Never logged.
        type: str
      secret_key:
        description: S3 secret key. Never logged.
        type: str
      session_token:
        description: S3 session token for temporary credentials. Never logged.
        type: str
      sse:
        description: Server-side encryption of every object written.
        type: str
        choices: [none, AES256, 'aws:kms']
      sse_kms_key_id:
        description: The KMS key for C(sse=aws:kms).
        type: str
      storage_class:
        description: Storage class of new objects (C(STANDARD), C(STANDARD_IA), ...). Archive tiers belong in the
          bucket's lifecycle rules (M(immersiverse.dr.s3_backup_lifecycle)), not here.
        type: str
      tags:
        description: Object tags for every object written.
        type: dict
      part_size_mb:
        description: Multipart part size in MiB (at least 5).
        type: int
        default: 16
      concurrency:
        description: Parts or files uploaded in parallel.
        type: int
        default: 4
      max_attempts:
        description: Attempts per S3 call (exponential back-off with jitter between them).
        type: int
        default: 5
      validate_certs:
        description: Verify the endpoint's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: A CA bundle to verify the endpoint's certificate with.
        type: path
      create_check:
        description:
          - How a create-only write (a WAL segment, the runbook lock) to a versioned bucket is proven first.
          - C(versions) lists the key's versions after the write (needs C(s3:ListBucketVersions)); a second writer
            takes its version back. Ceph RGW 16.2 needs it, since it ignores C(If-None-Match) on versioned buckets.
          - C(header) trusts C(If-None-Match), for servers that honour it on versioned buckets (AWS S3); one
            request fewer per write.
        type: str
        choices: [versions, header]
        default: versions
        version_added: 0.10.0
"""

    REPOSITORIES = r"""
options:
  repositories:
    description: The repositories (regions) to report on.
    type: list
    elements: dict
    required: true
    suboptions:
      type:
        description: C(s3) (AWS, MinIO, Ceph, any S3-compatible endpoint) or C(local) (a directory).
        type: str
        default: s3
        choices: [s3, local]
      name:
        description: What reports call this repository, usually the region (C(primary)).
        type: str
        default: ''
      path:
        description: Absolute directory of a C(local) repository.
        type: path
      bucket:
        description: The S3 bucket.
        type: str
      prefix:
        description: Where the repository starts inside the bucket (C(auth-db)); backups go under C(<prefix>/backup/),
          WAL under C(<prefix>/wal/), logical dumps under C(<prefix>/logical/).
        type: str
        default: ''
      endpoint_url:
        description: The S3 endpoint for MinIO, Ceph or a local stand-in; omit for AWS.
        type: str
      region:
        description: The bucket's region.
        type: str
      access_key:
        description: S3 access key. Omit to use the environment or an instance profile. Never logged.
        type: str
      secret_key:
        description: S3 secret key. Never logged.
        type: str
      session_token:
        description: S3 session token for temporary credentials. Never logged.
        type: str
      sse:
        description: Server-side encryption of every object written.
        type: str
        choices: [none, AES256, 'aws:kms']
      sse_kms_key_id:
        description: The KMS key for C(sse=aws:kms).
        type: str
      storage_class:
        description: Storage class of new objects (C(STANDARD), C(STANDARD_IA), ...). Archive tiers belong in the
          bucket's lifecycle rules (M(immersiverse.dr.s3_backup_lifecycle)), not here.
        type: str
      tags:
        description: Object tags for every object written.
        type: dict
      part_size_mb:
        description: Multipart part size in MiB (at least 5).
        type: int
        default: 16
      concurrency:
        description: Parts or files uploaded in parallel.
        type: int
        default: 4
      max_attempts:
        description: Attempts per S3 call (exponential back-off with jitter between them).
        type: int
        default: 5
      validate_certs:
        description: Verify the endpoint's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: A CA bundle to verify the endpoint's certificate with.
        type: path
      create_check:
        description:
          - How a create-only write (a WAL segment, the runbook lock) to a versioned bucket is proven first.
          - C(versions) lists the key's versions after the write (needs C(s3:ListBucketVersions)); a second writer
            takes its version back. Ceph RGW 16.2 needs it, since it ignores C(If-None-Match) on versioned buckets.
          - C(header) trusts C(If-None-Match), for servers that honour it on versioned buckets (AWS S3); one
            request fewer per write.
        type: str
        choices: [versions, header]
        default: versions
        version_added: 0.10.0
"""

    # The options pg_backup_verify and pg_backup_info share for a verification (both call
    # _backup.operations.backup_info), documented once.
    VERIFICATION = r"""
options:
  scratch_dir:
    description: Where a full verification restores a backup (needs room for the whole database).
    type: path
  pg_bin_dir:
    description: Where pg_verifybackup lives.
    type: path
    default: /usr/lib/postgresql/15/bin
  fail_on_problems:
    description: Fail when a verification finds a problem.
    type: bool
    default: true
requirements:
  - boto3 for S3 repositories, on the host the module runs on
"""
