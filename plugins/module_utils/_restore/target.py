# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A recovery target as the operator gives it (``latest``, a time, an LSN, an xid, a restore point),
normalised and validated before anything is planned.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import re

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery_conf as pg_recovery_conf
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

TARGET_TYPES = ("end", "immediate", "time", "lsn", "xid", "name")


class RestoreError(_errors.DrError):
    """A restore that must not go on; the message says why and what to do next."""


# -- targets ---------------------------------------------------------------------------------------------------------
def parse_target_time(value):
    """A recovery_target_time as an aware datetime, by the same rule pg_recovery writes it with: an explicit zone
    (offset, Z/UTC, or an IANA name), never a naive time nor an abbreviation."""
    try:
        return pg_recovery_conf.parse_time(str(value or "").strip())
    except pg_recovery_conf.RecoveryError as exc:
        raise RestoreError(str(exc)) from None


def normalise_target(target):
    """{'type', 'value', 'inclusive', 'timeline'} checked; the value parsed for time and LSN targets."""
    target = dict(target or {})
    kind = target.get("type") or "end"
    if kind not in TARGET_TYPES:
        raise RestoreError("unknown target type %r (one of %s)" % (kind, ", ".join(TARGET_TYPES)))
    value = target.get("value")
    out = {"type": kind, "value": value, "inclusive": bool(target.get("inclusive", True)),
           "timeline": str(target.get("timeline") or "latest")}
    if kind in ("end", "immediate"):
        if value not in (None, ""):
            raise RestoreError("a %s target takes no value (got %r)" % (kind, value))
        out["value"] = None
    elif value in (None, ""):
        raise RestoreError("a %s target needs a value" % kind)
    elif kind == "time":
        out["moment"] = parse_target_time(value)
        out["value"] = str(value)
    elif kind == "lsn":
        try:
            out["lsn_int"] = wal_naming.lsn_to_int(value)
        except wal_naming.WalError as exc:
            raise RestoreError("target_lsn: %s" % exc) from None
        out["value"] = wal_naming.int_to_lsn(out["lsn_int"])
    elif kind == "xid":
        if not re.match(r"^[1-9][0-9]{0,19}$", str(value)):
            raise RestoreError("target_xid %r is not a transaction id" % (value,))
        out["value"] = str(value)
    elif kind == "name":
        if re.search(r"['\n\r\0\\]", str(value)) or len(str(value)) > 63:
            raise RestoreError("target_name %r: at most 63 characters, no quotes, backslashes or newlines"
                               % (value,))
    tl = out["timeline"]
    if tl not in ("latest", "current") and not re.match(r"^[1-9][0-9]{0,9}$", tl):
        raise RestoreError("target timeline %r: latest, current or a timeline number" % tl)
    return out
