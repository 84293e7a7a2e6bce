# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbooks' decisions: who is fenced, who is promoted, who follows, and why a run must not go on.

Plain functions over the detect phase's summary (_topology.summarise()), so every rule is tested without a lab and
written once: failover.yml, switchover.yml, rejoin.yml and the drill ask these functions and act on the answer.

An unplanned failover to region R: the most advanced reachable standby of the cluster in R is the candidate. Every
host outside R that is not a reachable standby (a primary, a host whose PostgreSQL is down, a host that cannot be
reached) is fenced before the candidate is promoted; the reachable standbys follow it. The candidate is refused when
it lags the most advanced host the run can see by more than the limit (bytes or seconds), when two writable
primaries are seen, or (synchronous mode) when it may lack acknowledged writes - unless forced, and never for split
brain.
"""

from __future__ import annotations

import re
from datetime import datetime


_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def lsn_int(lsn):
    """An LSN like 0/3000148 as an integer, None for None or anything else."""
    m = _LSN.match(lsn or "")
    return (int(m.group(1), 16) << 32) + int(m.group(2), 16) if m else None


def slot_name(host):
    """The replication slot (and application_name) the standby role gives a host."""
    return "standby_" + re.sub(r"[^a-z0-9_]", "_", host)


def synchronous_standbys(host_regions, region, sync_regions):
    """The standbys a primary in ``region`` waits for in synchronous mode: the slot names (= application_name) of
    the hosts of the synchronous regions other than its own. host_regions: [[host, region], ...] in inventory
    order (the order the names are listed in)."""
    return [slot_name(h) for h, r in host_regions if r in (sync_regions or ()) and r != region]


def synchronous_setting(names, count=1):
    """synchronous_standby_names for those standbys: 'ANY <count> ("a", "b")' (a quorum), '' for none (async)."""
    return "ANY %d (%s)" % (int(count), ", ".join('"%s"' % n for n in names)) if names else ""


def position(row):
    """How far a host's WAL reaches: a primary's current LSN, a standby's received or replayed LSN (the larger)."""
    if not row.get("reachable"):
        return None
    if row.get("role") == "primary":
        return lsn_int(row.get("current_lsn"))
    values = [v for v in (lsn_int(row.get("receive_lsn")), lsn_int(row.get("replay_lsn")),
                          lsn_int(row.get("current_lsn"))) if v is not None]
    return max(values) if values else None


def _when(text):
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _fmt_bytes(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return "%.1f %s" % (n / size, unit)
    return "%d B" % n


def _members(summary):
    cluster = summary.get("system_identifier")
    return [r for r in summary.get("hosts", [])
            if r.get("reachable") and (not cluster or r.get("system_identifier") == cluster)]


def _fence_entry(row, why):
    return {"host": row["host"], "region": row["region"], "was": row["role"] if row.get("reachable") else "down",
            "how": "stop" if row.get("host_reachable", row.get("reachable")) else "out_of_band",
            "already_fenced": bool((row.get("fence") or {}).get("fenced")) and row.get("role") == "down",
            "reason": why}


def lag_of(summary, candidate):
    """The candidate's lag behind the most advanced host of the cluster this run could read.

    bytes: reference position - candidate position. seconds: as the reachable primary measures the candidate
    (pg_stat_replication.replay_lag) or else the gap between the newest commit any standby replayed and the newest
    the candidate replayed. reference: the host the bytes are measured against (the primary when it is reachable).
    """
    rows = {r["host"]: r for r in summary.get("hosts", [])}
    me = rows[candidate]
    members = _members(summary)
    mine = position(me)
    best = None
    for r in members:
        p = position(r)
        if p is not None and (best is None or p > best[0] or (p == best[0] and r["host"] == candidate)):
            best = (p, r)
    if mine is None or best is None:
        return {"bytes": None, "seconds": None, "reference_host": None, "reference_region": None,
                "most_advanced": None, "most_advanced_region": None, "candidate_lsn": me.get("current_lsn"),
                "known": False}
    ref = best[1]
    seconds = None
    primary = next((r for r in members if r.get("role") == "primary" and r["host"] != candidate), None)
    if primary is not None and position(primary) == best[0]:
        ref = primary  # a candidate level with the reachable primary lags it (its seconds), not itself
    if primary is not None:
        for rep in primary.get("replication") or []:
            if rep.get("application_name") == slot_name(candidate):
                seconds = float(rep.get("replay_lag_seconds") or 0.0)
    if seconds is None:
        newest = max((_when(r.get("last_replay_at")) for r in members if _when(r.get("last_replay_at"))),
                     default=None)
        own = _when(me.get("last_replay_at"))
        if newest and own:
            seconds = max(0.0, (newest - own).total_seconds())
        elif best[0] == mine:
            seconds = 0.0  # nothing anyone holds is missing here
        # else: unknown (nothing replayed since a restart); the plan warns instead of calling it 0
    most = max((r for r in members if r.get("role") == "standby" and position(r) is not None),
               key=lambda r: (position(r), r["host"] == candidate), default=None)
    return {"bytes": max(0, best[0] - mine), "seconds": None if seconds is None else round(seconds, 3),
            "reference_host": ref["host"], "reference_region": ref["region"],
            "reference_lsn": ref.get("current_lsn") if ref.get("role") == "primary" else
            (ref.get("receive_lsn") or ref.get("current_lsn")),
            "most_advanced": most["host"] if most else None, "most_advanced_region": most["region"] if most else None,
            "candidate_lsn": me.get("receive_lsn") or me.get("current_lsn"), "known": True}


def failover_plan(summary, target_region, max_lag_bytes=16 << 20, max_lag_seconds=30.0, force=False,
                  sync_regions=()):
    """What an unplanned failover to target_region does, and why it must not (refusals), as plain data.

    state: "promote" (the candidate is a standby and will be promoted), "promoted" (it already is the cluster's
    only primary: the run resumes or re-checks, it promotes nothing), or "refused".
    """
    hosts = summary.get("hosts", [])
    regions = []
    for r in hosts:
        if r["region"] not in regions:
            regions.append(r["region"])
    plan = {"target_region": target_region, "candidate": None, "state": "refused", "fence": [], "follow": [],
            "lag": None, "refusals": [], "warnings": [], "forced": [], "primaries": list(summary.get("primaries", [])),
            "positions": {r["host"]: (r.get("current_lsn") if r.get("role") == "primary"
                                      else r.get("receive_lsn") or r.get("current_lsn")) for r in hosts}}
    refuse = plan["refusals"].append
    if target_region not in regions:
        refuse("no database host of the inventory is in region '%s' (regions: %s); -l names the region that will "
               "serve" % (target_region, ", ".join(regions) or "none"))
        return plan
    if summary.get("split_brain"):
        refuse("SPLIT BRAIN: %s all accept writes. The runbook will not choose between them: stop writes to all but "
               "one (playbooks/failover.yml fences only hosts it was asked to), compare their current LSN and the "
               "audit_logs tail, and rebuild the others (playbooks/rejoin.yml)" % " and ".join(summary["primaries"]))
        return plan
    cluster = summary.get("system_identifier")
    local = [r for r in hosts if r["region"] == target_region]
    primary_here = [r for r in local if r.get("reachable") and r.get("role") == "primary"
                    and r.get("system_identifier") == cluster]
    standbys_here = [r for r in local if r.get("reachable") and r.get("role") == "standby"
                     and (not cluster or r.get("system_identifier") == cluster)]
    newest_tl = max((r.get("timeline") or 0 for r in hosts if r.get("reachable")
                     and r.get("system_identifier") == cluster), default=0)
    if primary_here:
        me = primary_here[0]
        if (me.get("fence") or {}).get("fenced"):
            refuse("%s runs as a primary although the isolate phase fenced it (%s): it is a former primary that was "
                   "started again, not the one that serves. Stop it, then fail over to the region that should serve"
                   % (me["host"], ((me.get("fence") or {}).get("marker") or {}).get("reason", "fence marker present")))
            return plan
        if (me.get("timeline") or 0) < newest_tl:
            refuse("%s is a primary on timeline %s while the cluster has reached timeline %s: it is a stale former "
                   "primary. Stop it and rejoin it (playbooks/rejoin.yml)"
                   % (me["host"], me.get("timeline"), newest_tl))
            return plan
        plan["candidate"] = me["host"]
        plan["state"] = "promoted"
    elif standbys_here:
        best = max(standbys_here, key=lambda r: (position(r) or -1, r["host"]))
        plan["candidate"] = best["host"]
        plan["state"] = "promote"
    else:
        refuse("region '%s' has no reachable standby of the cluster to promote (%s); restore it from backup "
               "(playbooks/restore.yml) or choose another region"
               % (target_region, "; ".join("%s: %s" % (r["host"], r["role"] if r.get("reachable") else
                                                       "unreachable (%s)" % r.get("error")) for r in local)))
        return plan
    candidate = plan["candidate"]
    plan["candidate_region"] = target_region
    for r in hosts:
        if r["host"] == candidate:
            continue
        if r.get("reachable") and r.get("role") == "standby" and r.get("system_identifier") == cluster:
            plan["follow"].append(r["host"])
        elif not r.get("reachable"):
            plan["fence"].append(_fence_entry(r, "cannot be read (%s): it may still serve writes" % r.get("error")
                                              if not r.get("host_reachable", False)
                                              else "its PostgreSQL is down: it must not start as a primary"))
        elif r.get("role") == "primary":
            plan["fence"].append(_fence_entry(r, "accepts writes (timeline %s, LSN %s)"
                                              % (r.get("timeline"), r.get("current_lsn"))))
            if r.get("system_identifier") == cluster and plan["state"] == "promote":
                plan["warnings"].append(
                    "%s (%s) is up and serving: a failover stops it and loses what it did not send yet; "
                    "playbooks/switchover.yml -l %s loses nothing" % (r["host"], r["region"], target_region))
        else:
            plan["fence"].append(_fence_entry(r, "belongs to another cluster (system identifier %s)"
                                              % r.get("system_identifier")))
    if plan["state"] == "promoted":
        return plan
    lag = lag_of(summary, candidate)
    plan["lag"] = lag
    if lag["known"]:
        too_far = []
        if max_lag_bytes is not None and lag["bytes"] > int(max_lag_bytes):
            too_far.append("%s of WAL (%d bytes; limit %d)" % (_fmt_bytes(lag["bytes"]), lag["bytes"],
                                                               int(max_lag_bytes)))
        if max_lag_seconds is not None and lag["seconds"] is not None and lag["seconds"] > float(max_lag_seconds):
            too_far.append("%.1f s of commits (limit %s s)" % (lag["seconds"], max_lag_seconds))
        if lag["seconds"] is None:
            plan["warnings"].append("the lag of %s in seconds is unknown (no commit replayed since it started); only "
                                    "its lag in bytes was checked" % candidate)
        if too_far:
            if lag["most_advanced"] and lag["most_advanced"] != candidate:
                where = ("The most advanced standby is %s in region '%s'; fail over there (-l %s)"
                         % (lag["most_advanced"], lag["most_advanced_region"], lag["most_advanced_region"]))
            else:
                where = ("No standby is more advanced: wait until %s has caught up with %s, or move the service "
                         "without loss with playbooks/switchover.yml -l %s"
                         % (candidate, lag["reference_host"], target_region))
            msg = ("%s lags %s behind %s (%s, LSN %s; the candidate is at %s). %s, or accept the loss with "
                   "-e force=true" % (candidate, " and ".join(too_far), lag["reference_host"],
                                      lag["reference_region"], lag["reference_lsn"], lag["candidate_lsn"], where))
            (plan["forced"] if force else plan["refusals"]).append(msg)
    else:
        plan["warnings"].append("the lag of %s could not be measured (no position read from it or any other host)"
                                % candidate)
    if sync_regions:
        _sync_rules(summary, plan, candidate, target_region, list(sync_regions), force)
    else:
        running = ["%s: '%s'" % (r["host"], r["synchronous_standby_names"]) for r in hosts
                   if r.get("reachable") and r.get("synchronous_standby_names")]
        if running:
            msg = ("the hosts run synchronous replication (%s) but this run was not told its regions "
                   "(dr_synchronous_regions is empty), so it would apply the asynchronous rules and could promote a "
                   "standby that lacks acknowledged writes. Set dr_synchronous_regions as playbooks/synchronous.yml "
                   "was run (in the inventory, or -e)" % "; ".join(running))
            (plan["forced"] if force else plan["refusals"]).append(msg + ("" if force else
                                                                          ", or accept the risk with -e force=true"))
    if plan["refusals"]:
        plan["state"] = "refused"
    return plan


def former_primaries(summary):
    """The host this run cannot read that the readable standbys stream (or are told to stream) from: the primary
    that failed, as opposed to a standby that failed with it. A list of that one inventory name, or [] when no
    unreadable host or more than one is named (then none is assumed to be the primary)."""
    told = set()
    for r in summary.get("hosts", []):
        if r.get("reachable") and r.get("role") == "standby":
            told.update(a for a in (r.get("upstream_host"), r.get("sender_host")) if a)
    named = [r["host"] for r in summary.get("hosts", [])
             if not r.get("reachable") and (r.get("address") or r["host"]) in told]
    # more than one: some standby names a stale upstream, and which of them served cannot be told: none is assumed
    return named if len(named) == 1 else []


def _sync_rules(summary, plan, candidate, target_region, sync_regions, force):
    """Synchronous mode (ANY 1 over the remote regions): every acknowledged commit is on at least one synchronous
    standby, so only the most advanced of them is sure to hold them all; an unreadable one may hold more."""
    why = []
    if target_region not in sync_regions:
        why.append("region '%s' is not a synchronous region (dr_synchronous_regions: %s): it may lack acknowledged "
                   "writes" % (target_region, ", ".join(sync_regions)))
    mine = position({r["host"]: r for r in summary["hosts"]}[candidate]) or 0
    upstream = former_primaries(summary)
    plan["former_primaries"] = upstream
    for r in summary["hosts"]:
        if r["host"] == candidate or r["region"] not in sync_regions or r.get("role") == "primary":
            continue
        if not r.get("reachable") and r["host"] in upstream:
            continue  # the primary that failed: it acknowledged the writes, it is not a standby that holds them
        if not r.get("reachable"):
            why.append("the synchronous standby %s (%s) could not be read: it may hold acknowledged writes %s lacks"
                       % (r["host"], r["region"], candidate))
        elif (position(r) or 0) > mine:
            why.append("the synchronous standby %s (%s) is %d bytes ahead: it holds acknowledged writes %s lacks"
                       % (r["host"], r["region"], (position(r) or 0) - mine, candidate))
    for msg in why:
        (plan["forced"] if force else plan["refusals"]).append(
            "synchronous mode: " + msg + ("" if force else "; -e force=true accepts the loss"))


def switchover_plan(summary, target_region):
    """A planned switchover to target_region: the current primary must serve and the candidate stream from it.

    state: "switch" (do it), "done" (the target region serves and the old primary follows it), or "refused".
    """
    plan = {"target_region": target_region, "state": "refused", "primary": None, "candidate": None, "follow": [],
            "rejoin": [], "refusals": [], "warnings": []}
    refuse = plan["refusals"].append
    hosts = summary.get("hosts", [])
    if summary.get("split_brain"):
        refuse("SPLIT BRAIN: %s all accept writes; a switchover needs exactly one primary"
               % " and ".join(summary["primaries"]))
        return plan
    cluster = summary.get("system_identifier")
    local = [r for r in hosts if r["region"] == target_region]
    if not local:
        refuse("no database host of the inventory is in region '%s'" % target_region)
        return plan
    current = summary.get("current_primary")
    if not current:
        refuse("no region serves writes: a switchover moves a serving primary; use playbooks/failover.yml -l %s"
               % target_region)
        return plan
    rows = {r["host"]: r for r in hosts}
    if rows[current]["region"] == target_region:
        # Done, or resumed after a run was killed past the promotion: the other standbys follow, and a host that
        # run fenced (up, PostgreSQL down, marker present) is brought back as a standby.
        plan.update(state="done", primary=current, candidate=current,
                    follow=[r["host"] for r in hosts if r["host"] != current and r.get("reachable")
                            and r.get("role") == "standby" and r.get("system_identifier") == cluster],
                    rejoin=[r["host"] for r in hosts if r["host"] != current and not r.get("reachable")
                            and r.get("host_reachable") and _fenced_by_switchover(r)])
        others = [r["host"] for r in hosts if r["host"] != current and not r.get("reachable")
                  and r["host"] not in plan["rejoin"]]
        if others:
            plan["warnings"].append("%s: down or unreachable, not fenced by a switchover; playbooks/rejoin.yml brings "
                                    "them back (a rewind discards what they wrote after the fork)" % ", ".join(others))
        return plan
    streaming = [r for r in local if r.get("reachable") and r.get("role") == "standby"
                 and r.get("system_identifier") == cluster and r.get("receiver_status") == "streaming"]
    if not streaming:
        refuse("region '%s' has no standby streaming from %s (%s); a switchover must lose nothing, so it needs one: "
               "rebuild it (playbooks/rejoin.yml -l %s) first"
               % (target_region, current,
                  "; ".join("%s: %s" % (r["host"], r.get("receiver_status") or r["role"]) for r in local),
                  target_region))
        return plan
    cand = max(streaming, key=lambda r: (position(r) or -1, r["host"]))
    plan.update(state="switch", primary=current, candidate=cand["host"], rejoin=[current])
    for r in hosts:
        if r["host"] in (current, cand["host"]):
            continue
        if r.get("reachable") and r.get("role") == "standby" and r.get("system_identifier") == cluster:
            plan["follow"].append(r["host"])
        else:
            # The promotion refuses while a host that is not a standby was not fenced in this run; refusing now,
            # before writes stop, keeps the old primary serving.
            refuse("%s is %s: a switchover promotes only while every other host is a standby. Bring it back "
                   "(playbooks/rejoin.yml -l %s) or fence it (role isolate) first; nothing was changed"
                   % (r["host"], r["role"] if r.get("host_reachable", r.get("reachable")) else "unreachable",
                      r["region"]))
    if plan["refusals"]:
        plan["state"] = "refused"
    return plan


def _fenced_by_switchover(row):
    marker = (row.get("fence") or {}).get("marker") or {}
    return (row.get("fence") or {}).get("fenced", False) and str(marker.get("reason", "")).startswith("switchover")


def rejoin_refusals(summary, host):
    """Why ``host`` must not be turned into a standby now (empty: it may)."""
    rows = {r["host"]: r for r in summary.get("hosts", [])}
    me = rows.get(host)
    current = summary.get("current_primary")
    if me is None:
        return ["%s was not read by the detect phase" % host]
    if summary.get("split_brain"):
        return ["SPLIT BRAIN: %s all accept writes; decide which one serves and fence the others first "
                "(playbooks/failover.yml -l <region>)" % " and ".join(summary["primaries"])]
    if not current:
        return ["no region serves writes, so there is nothing to rejoin: fail over first "
                "(playbooks/failover.yml -l <region>)"]
    if current == host:
        return ["%s is the serving primary (%s): rejoin brings back a failed host, it never demotes the one "
                "that serves (use playbooks/switchover.yml to move the service)" % (host, me["region"])]
    if me.get("reachable") and me.get("role") == "primary":
        return ["%s accepts writes (timeline %s, LSN %s) while %s serves: fence it first (playbooks/failover.yml "
                "-l %s fences every other writable host)"
                % (host, me.get("timeline"), me.get("current_lsn"), current, rows[current]["region"])]
    if not me.get("host_reachable", me.get("reachable")):
        return ["%s cannot be reached (%s): bring the host back first" % (host, me.get("error"))]
    return []
