# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copying a finished backup to another repository (the offsite store): every object create-only and checked
against its stored sha256, the catalog record last.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import time

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base


# -- offsite copies --------------------------------------------------------------------------------------------------
def copy_backup(source, destination, record, area="backup"):
    """Copy a committed backup to another repository, each file checksummed, the catalog record last."""
    prefix = "%s/%s/" % (area, record["id"])
    existing = destination.head(prefix + backup_catalog.RECORD)
    if existing is not None:
        return {"repository": destination.describe(), "name": destination.name, "changed": False,
                "method": "present"}
    t0 = time.monotonic()
    methods = set()
    for entry in record["files"]:
        info = repo_base.copy_object(source, destination, prefix + entry["name"], expected_sha256=entry["sha256"],
                                     overwrite=True)
        methods.add(info.get("method"))
    raw = source.get_bytes(prefix + backup_catalog.RECORD)
    destination.put_bytes(prefix + backup_catalog.RECORD, raw, overwrite=True)
    return {"repository": destination.describe(), "name": destination.name, "changed": True,
            "method": ",".join(sorted(m for m in methods if m)), "seconds": round(time.monotonic() - t0, 3)}
