# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verifying a stored backup: the stored checksums, or a full check (restore into scratch, pg_verifybackup), and
the verification recorded in the catalog.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import tar as backup_tar
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base


# -- verification on demand ------------------------------------------------------------------------------------------
def verify_checksums(repository, record, area="backup"):
    """Read every stored file back and compare size and sha256 with the catalog. Returns a list of problems."""
    problems = []
    for entry in record.get("files", []):
        key = "%s/%s/%s" % (area, record["id"], entry["name"])
        try:
            repository.verify(key, entry["sha256"], entry.get("size"))
        except repo_base.RepositoryError as exc:
            problems.append(str(exc))
    return problems


def verify_full(repository, record, pg_bin, scratch_dir):
    """Restore the backup into a scratch directory with tar and run PostgreSQL's own pg_verifybackup on it
    (manifest, every file's checksum, and the WAL it needs, parsed with pg_waldump)."""
    problems = verify_checksums(repository, record)
    if problems:
        return problems
    os.makedirs(scratch_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="verify-%s-" % record["id"], dir=scratch_dir)
    try:
        data = os.path.join(work, "data")
        os.makedirs(os.path.join(data, "pg_wal"), mode=0o700)
        os.chmod(data, 0o700)
        for entry in record["files"]:
            name = entry["name"]
            key = "backup/%s/%s" % (record["id"], name)
            if name == "backup_manifest":
                with open(os.path.join(data, name), "wb") as fh:
                    fh.write(repository.get_bytes(key))
                continue
            dest = os.path.join(data, "pg_wal") if name.startswith("pg_wal.tar") else data
            if not name.startswith(("base.tar", "pg_wal.tar")):
                continue  # tablespaces: pg_verifybackup would need them mapped; checked by checksum above
            backup_tar.extract_tar_stream(repository.open(key), name, dest)
        result = subprocess.run([os.path.join(pg_bin, "pg_verifybackup"), "-q", data], capture_output=True, check=False,
                                text=True, timeout=3600)
        if result.returncode != 0:
            problems.append("pg_verifybackup: %s" % (result.stderr.strip() or result.stdout.strip()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return problems


def record_verification(repository, record, result, method, problems, area="backup"):
    doc = {"result": result, "method": method, "time": backup_catalog.iso(backup_catalog.utcnow()),
           "problems": problems[:50]}
    repository.put_bytes("%s/%s/%s" % (area, record["id"], backup_catalog.VERIFIED), json.dumps(doc).encode(),
                         overwrite=True)
    return doc
