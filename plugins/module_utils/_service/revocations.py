# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Auth-safe recovery: a database recovered to T has forgotten every token revoked after T, so those tokens would
be valid again. This puts them back.

The revocations made after T are read from the revocation event stream (one Kafka event per revocation, from every
source given: each region's broker, or a mirrored topic) and from the revocations cached in Redis
(``revoked:<jti>``), and inserted into ``token_blacklist`` (``ON CONFLICT DO NOTHING``: idempotent). When the
stream cannot prove it covers the gap (a source that must answer did not, retention removed events after T, an event
could not be read), a cut-off is recorded instead: ``token_revocation_cutoff.not_before`` says that every token
issued before that moment is invalid, so every user signs in again. That is loud, and it is safe.

Then it verifies: every revocation it saw (not yet expired) is in ``token_blacklist``.

The tables are the service schema's (roles/service_schema/files/schema.sql). Private to the collection; plain
Python, no Ansible.
"""

from __future__ import annotations

import datetime
import uuid

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import kafka_ops
from ansible_collections.immersiverse.dr.plugins.module_utils._service import redis_ops

CUTOFF_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS token_revocation_cutoff (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    not_before  timestamptz NOT NULL,
    reason      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    run_key     text        NOT NULL,
    CONSTRAINT token_revocation_cutoff_run_key_key UNIQUE (run_key)
)
"""

INSERT_SQL = """
INSERT INTO token_blacklist (jti, user_id, reason, revoked_at, expires_at)
SELECT v.jti::uuid, u.id, v.reason, v.revoked_at::timestamptz, v.expires_at::timestamptz
  FROM (VALUES %s) AS v (jti, user_id, reason, revoked_at, expires_at)
  LEFT JOIN users u ON u.id = v.user_id::bigint
ON CONFLICT (jti) DO NOTHING
"""


class RevocationError(_errors.DrError):
    """The revocations cannot be made safe; the message says why and what to do."""


def parse_time(text, what="time"):
    if isinstance(text, datetime.datetime):
        moment = text
    else:
        try:
            moment = datetime.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            raise RevocationError("%s %r is not an ISO 8601 time" % (what, text)) from None
    if moment.tzinfo is None:
        raise RevocationError("%s %r has no time zone: give one (+00:00)" % (what, text))
    return moment.astimezone(datetime.timezone.utc)


def _normalise(event, default_ttl, source):
    """(row, problem): the row to insert for one event, or why it cannot be used."""
    try:
        jti = str(uuid.UUID(str(event.get("jti"))))
    except (TypeError, ValueError, AttributeError):
        return None, "no valid jti"
    revoked_at = event.get("revoked_at")
    if revoked_at:
        try:
            revoked = parse_time(revoked_at, "revoked_at")
        except RevocationError:
            return None, "revoked_at unreadable"
    elif event.get("_timestamp_ms") is not None:
        revoked = datetime.datetime.fromtimestamp(event["_timestamp_ms"] / 1000.0, datetime.timezone.utc)
    else:
        return None, "no revoked_at"
    expires = None
    if event.get("expires_at"):
        try:
            expires = parse_time(event["expires_at"], "expires_at")
        except RevocationError:
            expires = None
    if expires is None or expires <= revoked:
        expires = revoked + datetime.timedelta(seconds=default_ttl)
    user_id = event.get("user_id")
    try:
        user_id = int(user_id) if user_id is not None else None
    except (TypeError, ValueError):
        user_id = None
    reason = str(event.get("reason") or "revoked")[:200]
    return {"jti": jti, "user_id": user_id, "reason": reason, "revoked_at": revoked, "expires_at": expires,
            "source": source}, None


def collect(since, kafka_sources, redis_sources, margin_seconds=60, timeout=5.0):
    """Read the revocations after ``since`` (minus the margin) from every source. Returns (rows by jti, per-source
    report, gap reasons)."""
    point = since - datetime.timedelta(seconds=margin_seconds)
    point_ms = int(point.timestamp() * 1000)
    rows, report, gaps = {}, [], []
    for src in kafka_sources or []:
        name = src.get("name") or src["bootstrap"]
        entry = {"source": "kafka:%s" % name, "topic": src["topic"], "required": src.get("required", True)}
        try:
            got = kafka_ops.read_since(src["bootstrap"], src["topic"], point_ms, timeout=timeout,
                                       security=src.get("security"))
        except kafka_ops.KafkaOpsError as exc:
            entry.update({"ok": False, "error": str(exc)})
            if entry["required"]:
                gaps.append("the revocation stream in %s could not be read (%s)" % (name, exc))
            report.append(entry)
            continue
        used = bad = 0
        for event in got["events"]:
            row, problem = _normalise(event, src.get("default_ttl", 86400), entry["source"])
            if row is None:
                bad += 1
                continue
            used += 1
            rows.setdefault(row["jti"], row)
        entry.update({"ok": True, "read": got["read"], "used": used, "unusable": got["unreadable"] + bad,
                      "coverage": got["coverage"], "partitions": got["partitions"]})
        if not got["coverage"]["complete"]:
            gaps.append("retention removed events of %s in %s after %s (partitions %s)" % (
                src["topic"], name, point.isoformat(),
                ", ".join(str(g["partition"]) for g in got["coverage"]["gaps"])))
        if entry["unusable"]:
            gaps.append("%d events of %s in %s could not be read as revocations"
                        % (entry["unusable"], src["topic"], name))
        report.append(entry)
    for src in redis_sources or []:
        name = src.get("name") or redis_ops.where(src["url"])
        entry = {"source": "redis:%s" % name, "pattern": src.get("pattern", "revoked:*"), "required": False}
        try:
            values, unreadable = redis_ops.read_json_values(src["url"], entry["pattern"], password=src.get("password"),
                                                            timeout=timeout)
        except redis_ops.RedisOpsError as exc:
            entry.update({"ok": False, "error": str(exc)})
            report.append(entry)
            continue
        used = 0
        for value in values:
            row, problem = _normalise(value, src.get("default_ttl", 86400), entry["source"])
            if row is None or row["revoked_at"] < point:
                continue
            used += 1
            rows.setdefault(row["jti"], row)
        entry.update({"ok": True, "read": len(values) + unreadable, "used": used, "unusable": unreadable})
        report.append(entry)
    return rows, report, gaps


def _present(conn, jtis):
    present = set()
    jtis = list(jtis)
    with conn.cursor() as cur:
        for start in range(0, len(jtis), 5000):
            cur.execute("SELECT jti::text FROM token_blacklist WHERE jti = ANY(%s::uuid[])",
                        (jtis[start:start + 5000],))
            present.update(r[0] for r in cur.fetchall())
    return present


def reapply(conn, since, kafka_sources, redis_sources=None, margin_seconds=60, on_gap="cutoff", cutoff_key=None,
            check_mode=False, timeout=5.0, now=None):
    """Put back every revocation made after ``since``; record a cut-off where the stream cannot prove it has them
    all (or fail, ``on_gap='fail'``). ``conn`` is a psycopg2 connection to the recovered primary's service
    database, as the application connects. Returns the report."""
    import psycopg2.extras

    since = parse_time(since, "recovery point")
    if on_gap not in ("cutoff", "fail"):
        raise RevocationError("on_gap must be cutoff or fail, not %r" % on_gap)
    if not kafka_sources:
        raise RevocationError("no revocation stream given: name at least one Kafka source (bootstrap and topic)")
    rows, report, gaps = collect(since, kafka_sources, redis_sources, margin_seconds, timeout)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    live = {j: r for j, r in rows.items() if r["expires_at"] > now}
    present = _present(conn, live)
    missing = sorted(set(live) - present)
    inserted = 0
    if missing and not check_mode:
        values = [(live[j]["jti"], live[j]["user_id"], live[j]["reason"], live[j]["revoked_at"], live[j]["expires_at"])
                  for j in missing]
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                psycopg2.extras.execute_values(cur, INSERT_SQL, values, page_size=1000)
                inserted = cur.rowcount
            conn.commit()
        except Exception:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True
    result = {"changed": bool(missing), "since": since.isoformat(), "margin_seconds": margin_seconds,
              "sources": report, "seen": len(rows), "expired": len(rows) - len(live), "already_present": len(present),
              "reapplied": len(missing) if check_mode else inserted, "reapplied_jtis": missing[:50],
              "gaps": gaps, "cutoff": None, "verified": None}
    if gaps:
        if on_gap == "fail":
            raise RevocationError(
                "the revocation stream does not cover the gap after %s: %s. Tokens revoked in that gap may be valid "
                "again. Re-run with on_gap=cutoff to invalidate every token issued before now, or restore the "
                "stream." % (since.isoformat(), "; ".join(gaps)))
        result["cutoff"] = _cutoff(conn, "; ".join(gaps), cutoff_key or "recovery:%s" % since.isoformat(),
                                   check_mode)
        result["changed"] = result["changed"] or result["cutoff"]["changed"]
    if not check_mode:
        still = sorted(set(live) - _present(conn, live))
        result["verified"] = not still
        if still:
            raise RevocationError("%d revocations are still missing from token_blacklist after the re-apply (e.g. %s):"
                                  " look at the database log; nothing else was changed" % (len(still), still[0]))
    return result


def _cutoff(conn, reason, key, check_mode):
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('token_revocation_cutoff') IS NOT NULL")
        exists = cur.fetchone()[0]
        if exists:
            cur.execute("SELECT not_before FROM token_revocation_cutoff WHERE run_key = %s", (key,))
            row = cur.fetchone()
            if row is not None:
                return {"changed": False, "not_before": row[0].isoformat(), "reason": reason, "run_key": key}
        if check_mode:
            return {"changed": True, "not_before": None, "reason": reason, "run_key": key}
        if not exists:
            cur.execute(CUTOFF_TABLE_SQL)
        cur.execute("INSERT INTO token_revocation_cutoff (not_before, reason, run_key) VALUES (now(), %s, %s) "
                    "ON CONFLICT (run_key) DO NOTHING RETURNING not_before", (reason[:2000], key))
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT not_before FROM token_revocation_cutoff WHERE run_key = %s", (key,))
            row = cur.fetchone()
        return {"changed": True, "not_before": row[0].isoformat(), "reason": reason, "run_key": key}


def cutoffs(conn):
    """The cut-offs recorded so far, newest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('token_revocation_cutoff') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT not_before, reason, run_key FROM token_revocation_cutoff ORDER BY not_before DESC")
        return [{"not_before": r[0].isoformat(), "reason": r[1], "run_key": r[2]} for r in cur.fetchall()]
