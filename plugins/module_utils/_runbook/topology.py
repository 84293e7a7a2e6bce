# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who serves: the replication topology of the regions, derived from each host's pg_facts.

A split brain is two writable primaries of the SAME cluster (same system identifier): both may have accepted
writes the other lacks. A writable server with another system identifier is a separate cluster (for example a
freshly initialised host that is about to be rebuilt as a standby); it is reported as foreign, not as a split brain.
"""

from __future__ import annotations

from collections import Counter


_REPLICATION_KEYS = ("application_name", "client_addr", "state", "sync_state", "replay_lsn", "replay_lag_bytes",
                     "replay_lag_seconds")
_COLUMNS = ("REGION", "HOST", "ROLE", "TL", "LSN", "LAG(B)", "SERVICES")
_FMT = "%-10s %-16s %-9s %-3s %-13s %-8s %s"


def summarise(hosts, services=None, preferred_region=None, regions=None):
    """hosts: [{"host", "region", "facts", "address"}] with facts as pg_facts returned them (or an unreachable
    result); address (optional, default the host's name) is how the other hosts reach it.

    services: {region: region_health result}. preferred_region breaks a tie between unrelated primaries;
    regions orders the rows.
    Returns the per-host rows, the current primary (inventory name or ""), split brain and foreign primaries.
    """
    services = services or {}
    order = {name: i for i, name in enumerate(regions or [])}
    rows = []
    for h in sorted(hosts, key=lambda h: (order.get(h["region"], len(order)), h["host"])):
        f = h.get("facts") or {}
        reachable = bool(f.get("reachable"))
        rows.append({
            "host": h["host"],
            "region": h["region"],
            "reachable": reachable,
            "role": f.get("role") if reachable else "down",
            "system_identifier": f.get("system_identifier") if reachable else None,
            "timeline": f.get("timeline") if reachable else None,
            "current_lsn": f.get("current_lsn") if reachable else None,
            "replay_lag_bytes": f.get("replay_lag_bytes") if reachable else None,
            "sender_host": ((f.get("wal_receiver") or {}).get("sender_host")) if reachable else None,
            "error": None if reachable else (f.get("error") or f.get("msg") or "unreachable"),
        })
        row = rows[-1]
        receiver = (f.get("wal_receiver") or {}) if reachable else {}
        # What the failover decides on: how much WAL each host holds (received, replayed, streamed), when it last
        # replayed a commit, what it archived, how the primary sees its standbys, and whether it is fenced.
        row.update({
            "receive_lsn": f.get("receive_lsn") if reachable else None,
            "replay_lsn": f.get("replay_lsn") if reachable else None,
            "last_replay_at": f.get("last_replay_at") if reachable else None,
            "receiver_status": receiver.get("status"),
            "last_streamed_lsn": receiver.get("latest_end_lsn"),
            "last_archived_wal": (f.get("archiver") or {}).get("last_archived_wal") if reachable else None,
            "replication": [{k: r.get(k) for k in _REPLICATION_KEYS}
                            for r in (f.get("replication") or [])] if reachable else [],
            "fence": f.get("fence"),
            # How the other hosts reach it (its ansible_host), and where a standby is told to stream from: the
            # failover tells the dead primary (the standbys' upstream) from a dead standby by these two.
            "address": h.get("address") or h["host"],
            "upstream_host": ((f.get("upstream") or {}).get("host")) if reachable else None,
            "synchronous_standby_names": ((f.get("settings") or {}).get("synchronous_standby_names") or None)
            if reachable else None,
            # The host itself answered (the task ran there); false only when Ansible could not reach it at all.
            "host_reachable": not f.get("unreachable", False),
        })
    # The cluster the regions belong to: the system identifier most reachable hosts share.
    sysids = Counter(r["system_identifier"] for r in rows if r["system_identifier"])
    primaries = [r for r in rows if r["role"] == "primary"]
    cluster_id = None
    if sysids:
        best = max(sysids.values())
        candidates = [s for s, n in sysids.items() if n == best]
        if len(candidates) > 1:
            preferred = [r["system_identifier"] for r in primaries if r["region"] == preferred_region]
            candidates = [s for s in candidates if s in preferred] or sorted(candidates)
        cluster_id = candidates[0]
    members = [r for r in primaries if r["system_identifier"] == cluster_id]
    foreign = [r["host"] for r in primaries if r["system_identifier"] != cluster_id]
    current = members[0] if len(members) == 1 else None
    return {
        "hosts": rows,
        "system_identifier": cluster_id,
        "primaries": [r["host"] for r in members],
        "split_brain": len(members) > 1,
        "foreign_primaries": foreign,
        "current_primary": current["host"] if current else "",
        "current_primary_region": current["region"] if current else "",
        "unreachable": [r["host"] for r in rows if not r["reachable"]],
        "hosts_unreachable": [r["host"] for r in rows if not r["host_reachable"]],
        "services": services,
        "unhealthy_services": {reg: s.get("unhealthy", []) for reg, s in services.items() if s.get("unhealthy")},
        "table": render_table(rows, services),
    }


def render_table(rows, services):
    lines = [_FMT % _COLUMNS]
    for r in rows:
        svc = services.get(r["region"], {}).get("services", {})
        down = sorted(name for name, res in svc.items() if not res.get("ok"))
        svc_text = ("DOWN: " + ",".join(down)) if down else ("ok (%s)" % ",".join(sorted(svc)) if svc else "")
        lines.append(_FMT % (r["region"], r["host"], r["role"], _dash(r["timeline"]), _dash(r["current_lsn"]),
                             _dash(r["replay_lag_bytes"]), svc_text or "-"))
    return lines


def _dash(value):
    return "-" if value is None else value


def promotion_blockers(summary, candidate, isolated=(), restoring=False):
    """Why ``candidate`` must not be promoted now, as sentences (empty: it may be).

    summary: what summarise() returned for every database host of the cluster, read in this run (the detect phase).
    isolated: hosts fenced in this run (the isolate phase), which cannot serve whatever summary says about them.

    At most one writable primary: every other host must be a standby of the cluster or isolated; a primary, a host
    whose PostgreSQL is down (it may start writable) and an unreachable host are blockers until isolated. The
    candidate itself must be a reachable standby of the same cluster (the same system identifier).

    restoring: the candidate is being restored from backup (its own state before does not matter, it is replaced);
    only the other hosts are checked: may a restore of it open for writes?
    """
    if not summary or not summary.get("hosts"):
        return ["no detect summary of this run: run the detect phase (immersiverse.dr.detect) over every database "
                "host of the cluster first, in the same play"]
    isolated = set(isolated or ())
    rows = {r["host"]: r for r in summary["hosts"]}
    cluster = summary.get("system_identifier")
    me = rows.get(candidate)
    reasons = []
    if restoring:
        pass
    elif me is None:
        reasons.append("%s is not among the hosts the detect phase read; run it over every database host"
                       % candidate)
    elif not me["reachable"] or me["role"] != "standby":
        reasons.append("%s is not a reachable standby (detect saw it %s); only a standby can be promoted"
                       % (candidate, me["role"] if me["reachable"] else "unreachable"))
    elif cluster and me["system_identifier"] != cluster:
        reasons.append("%s belongs to another cluster (system identifier %s, the cluster's is %s); rebuild it as a "
                       "standby before promoting it" % (candidate, me["system_identifier"], cluster))
    for name, row in rows.items():
        if name == candidate or name in isolated:
            continue
        if not row["reachable"]:
            reasons.append("%s could not be reached (%s) and was not isolated in this run: it may still serve "
                           "writes; isolate it (fence it out of band, or confirm it is dead)" % (name, row["error"]))
        elif row["role"] == "primary":
            reasons.append("%s still accepts writes (timeline %s, LSN %s): isolate it first"
                           % (name, row["timeline"], row["current_lsn"]))
        elif row["role"] != "standby":
            reasons.append("%s has PostgreSQL %s and was not isolated in this run: it could start as a primary; "
                           "isolate it first" % (name, row["role"]))
    return reasons
