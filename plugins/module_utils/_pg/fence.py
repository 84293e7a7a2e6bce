# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fence of a cluster: its start.conf (``disabled`` while fenced, ``auto`` while it serves) and the marker
beside it that says who fenced it, when and why. Read by detect, written by isolate, switchover and rejoin.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import json
import os

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection


# Written by the isolate phase (and the lab's out-of-band fence) beside start.conf; removed when the host is made a
# standby again. It says the host was a primary that must not serve: the rejoin reads it.
FENCE_MARKER = "immersiverse-dr-fence.json"


def read_fence(conf_dir):
    """The fence state of a Debian cluster from its configuration directory (/etc/postgresql/<v>/<cluster>).

    start_conf: the first word of start.conf that is not a comment (auto, manual, disabled) or None.
    marker: the fence marker's content (a dict) or None. fenced: a marker is present.
    """
    start = None
    try:
        with open(os.path.join(conf_dir, "start.conf"), encoding="utf-8") as fh:
            for line in fh:
                word = line.split("#", 1)[0].strip()
                if word:
                    start = word
                    break
    except OSError:
        pass
    marker = None
    try:
        with open(os.path.join(conf_dir, FENCE_MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
        if not isinstance(marker, dict):
            marker = {"unreadable": "not a JSON object"}
    except FileNotFoundError:
        marker = None
    except (OSError, ValueError) as exc:
        marker = {"unreadable": str(exc)}
    return {"start_conf": start, "marker": marker, "fenced": marker is not None}


# "disabled", not "manual": pg_ctlcluster (and so systemd's postgresql@ unit, at boot or by hand) refuses to start a
# disabled cluster; "manual" only skips the start at boot and would let an enabled unit start a fenced primary.
START_FENCED = "# fenced by immersiverse.dr: this host must not serve until it is made a standby again\ndisabled\n"
START_SERVING = "# immersiverse.dr: started at boot\nauto\n"


def set_fence(conf_dir, fenced, marker=None, check_mode=False):
    """Fence (start.conf ``disabled`` and the marker) or unfence (``auto``, no marker) a Debian cluster.

    Idempotent and compared by meaning: a start.conf that already says ``disabled`` (whoever wrote it) is left alone;
    an existing marker is kept (the first fence's reason and time survive re-runs). Files are replaced atomically and
    owned like the configuration directory. Returns {"changed", "actions", "before", "after"} (read_fence() each).
    """
    # Imported here, not at the top: reading the fence (pg_info, on the failover's critical path, run from source by
    # the short path) must not pay for compiling the recovery parser's expressions (about 30 ms a call).
    from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery as pg_recovery

    if not os.path.isdir(conf_dir):
        raise pg_connection.PgError(
            "%s is not a directory: is the cluster created (pg_lsclusters) and the path right?" % conf_dir)
    before = read_fence(conf_dir)
    want_start = "disabled" if fenced else "auto"
    actions = []
    if before["start_conf"] != want_start:
        actions.append("start.conf: %s -> %s" % (before["start_conf"], want_start))
    if fenced and before["marker"] is None:
        actions.append("fence marker written")
    if not fenced and before["marker"] is not None:
        actions.append("fence marker removed")
    if actions and not check_mode:
        info = os.stat(conf_dir)
        start = os.path.join(conf_dir, "start.conf")
        if before["start_conf"] != want_start:
            pg_recovery.write_file(start, (START_FENCED if fenced else START_SERVING).encode(), info.st_uid,
                                   info.st_gid, 0o644)
        marker_path = os.path.join(conf_dir, FENCE_MARKER)
        if fenced and before["marker"] is None:
            pg_recovery.write_file(marker_path, (json.dumps(marker or {}, indent=2, sort_keys=True) + "\n").encode(),
                                   info.st_uid, info.st_gid, 0o644)
        if not fenced and before["marker"] is not None:
            pg_recovery.remove_file(marker_path)
    after = read_fence(conf_dir) if not check_mode else {
        "start_conf": want_start, "marker": (before["marker"] or marker or {}) if fenced else None, "fenced": fenced}
    return {"changed": bool(actions), "actions": actions, "before": before, "after": after}


def text_diff(a, b):
    if a is None or b is None:
        return None
    return max(0, pg_connection.lsn_to_int(a) - pg_connection.lsn_to_int(b))
