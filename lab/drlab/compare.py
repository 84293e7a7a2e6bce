"""Compare a generator journal with a (recovered) database: what survived, what was lost, RPO and RTO.

Every write the generator makes inserts one ``audit_logs`` row carrying the write's ``request_id`` (UNIQUE) and,
in ``details->>'run_id'``, the run that made it; a request_id found there means the whole write survived (each
write is one transaction). Definitions (docs/generator.md):

- lost: an ``ack`` line whose request_id is not in the database.
- RPO: the time between the last acknowledged write before the failure and the last *surviving* acknowledged
  write before the failure (0 when nothing acknowledged before the failure was lost).
- RTO (as the client saw it): the first acknowledged write after the failure minus the failure time.

The failure time is an input (the moment the drill injected the fault); without it, the journal's own first
failure event that made the generator look for a new primary is used.

``python -m drlab.compare --journal J --dsn 'host=... port=... user=... dbname=authdb' [--failure-time T] --json``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg2
import psycopg2.extensions

from drlab.journal import (
    Journal,
    JournalError,
    Outage,
    format_ts,
    outages,
    parse_ts,
    record_time,
)

OP_EVENT = {"signup": "signup", "login": "login", "revoke": "token_revoked"}
LOOKUP_CHUNK = 5000

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_LOSS = 3  # only with --fail-on-loss


class CompareError(Exception):
    """The comparison could not be made; the message says why."""


@dataclass
class Report:
    journal: str | None
    run_ids: list[str]
    acked: list[dict]
    present: list[dict]
    missing: list[dict]
    mismatched: list[dict]
    unknown_found: list[dict]
    unknown_missing: list[dict]
    extra: list[str] | None
    failure_time: datetime | None
    failure_time_source: str
    last_acked_before_failure: datetime | None
    last_surviving_before_failure: datetime | None
    lost_before_failure: list[dict]
    lost_after_failure: list[dict]
    rpo_seconds: float | None
    rpo_is_lower_bound: bool
    first_ack_after_failure: dict | None
    rto_seconds: float | None
    outages: list[Outage] = field(default_factory=list)

    @property
    def newest_lost_acked_at(self) -> datetime | None:
        return max((record_time(r) for r in self.missing), default=None)

    @property
    def oldest_lost_acked_at(self) -> datetime | None:
        return min((record_time(r) for r in self.missing), default=None)

    def as_dict(self, *, list_present: bool = False) -> dict:
        def ts(moment: datetime | None) -> str | None:
            return format_ts(moment) if moment else None

        def brief(record: dict) -> dict:
            keys = ("request_id", "op", "region", "endpoint", "acked_at", "at", "lsn", "xid", "run_id")
            return {k: record[k] for k in keys if k in record}

        out = {
            "journal": self.journal,
            "run_ids": self.run_ids,
            "acked": len(self.acked),
            "present": len(self.present),
            "missing": len(self.missing),
            "missing_writes": [brief(r) for r in self.missing],
            "newest_lost_acked_at": ts(self.newest_lost_acked_at),
            "oldest_lost_acked_at": ts(self.oldest_lost_acked_at),
            "mismatched": [brief(r) for r in self.mismatched],
            "unknown": {
                "found": [brief(r) for r in self.unknown_found],
                "not_found": [brief(r) for r in self.unknown_missing],
            },
            "extra": self.extra,
            "failure_time": ts(self.failure_time),
            "failure_time_source": self.failure_time_source,
            "last_acked_before_failure": ts(self.last_acked_before_failure),
            "last_surviving_before_failure": ts(self.last_surviving_before_failure),
            "lost_before_failure": len(self.lost_before_failure),
            "lost_after_failure": len(self.lost_after_failure),
            "rpo_seconds": self.rpo_seconds,
            "rpo_is_lower_bound": self.rpo_is_lower_bound,
            "first_ack_after_failure": brief(self.first_ack_after_failure) if self.first_ack_after_failure else None,
            "rto_seconds": self.rto_seconds,
            "outages": [o.as_dict() for o in self.outages],
        }
        if list_present:
            out["present_request_ids"] = [r["request_id"] for r in self.present]
        return out

    def render(self) -> str:
        lines = [
            (
                f"journal {self.journal or '-'} (runs: {', '.join(self.run_ids) or 'none'}): "
                f"{len(self.acked)} acknowledged writes"
            ),
            f"  present {len(self.present)}, missing {len(self.missing)}",
        ]
        if self.missing:
            lines.append(
                f"  lost acked_at from {format_ts(self.oldest_lost_acked_at)} to {format_ts(self.newest_lost_acked_at)}"
            )
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} request_ids found with a different event_type than journalled")
        lines.append(
            f"  unknown outcome: {len(self.unknown_found)} committed after all, {len(self.unknown_missing)} not found"
        )
        if self.extra:
            lines.append(f"  {len(self.extra)} rows of these runs were never journalled as acked or unknown")
        if self.failure_time is None:
            lines.append("  no failure time given and none in the journal: every acked write counts")
        else:
            lines.append(f"  failure time {format_ts(self.failure_time)} ({self.failure_time_source})")
        if self.rpo_seconds is not None:
            bound = " (at least: nothing before the failure survived)" if self.rpo_is_lower_bound else ""
            lines.append(
                f"  RPO {self.rpo_seconds:.6f} s{bound}: {len(self.lost_before_failure)} acked writes lost before "
                f"the failure; last acked {_fmt(self.last_acked_before_failure)}, "
                f"last surviving {_fmt(self.last_surviving_before_failure)}"
            )
        if self.lost_after_failure:
            lines.append(f"  {len(self.lost_after_failure)} acked writes AFTER the failure time are lost too")
        if self.rto_seconds is not None:
            first = self.first_ack_after_failure
            lines.append(f"  RTO {self.rto_seconds:.6f} s: first acked write after the failure on {first['region']}")
        elif self.failure_time is not None:
            lines.append("  RTO unknown: no acknowledged write after the failure time")
        for outage in self.outages:
            took = f"{outage.seconds:.3f} s" if outage.seconds is not None else "not recovered"
            lines.append(
                f"  generator outage at {format_ts(outage.failed_at)} on {outage.failed_region} "
                f"({outage.error_class}) -> {outage.recovered_region or '-'}: {took}"
            )
        return "\n".join(lines)


def _fmt(moment: datetime | None) -> str:
    return format_ts(moment) if moment else "none"


def default_failure_time(journal: Journal) -> datetime | None:
    """The journal's first failure event that made the generator look for a new primary."""
    for event in journal.events("failure"):
        if event.get("rediscover"):
            return record_time(event)
    return None


def assess(
    journal: Journal,
    found: dict[str, str],
    *,
    failure_time: datetime | None = None,
    extra: Iterable[str] | None = None,
) -> Report:
    """The pure part: given which request_ids the database has (request_id -> audit event_type), judge the journal.

    ``extra`` is every request_id the database holds for the journal's runs; those neither acked nor unknown are
    reported (a write the generator committed without journalling it would be a generator bug).
    """
    source = "given"
    if failure_time is None:
        failure_time = default_failure_time(journal)
        source = "first failure event in the journal" if failure_time else "none"
    acked = sorted(journal.acks, key=record_time)
    present, missing, mismatched = [], [], []
    for record in acked:
        event_type = found.get(record["request_id"])
        if event_type is None:
            missing.append(record)
            continue
        present.append(record)
        if OP_EVENT.get(record["op"]) != event_type:
            mismatched.append(record)
    unknown_found = [r for r in journal.unknowns if r["request_id"] in found]
    unknown_missing = [r for r in journal.unknowns if r["request_id"] not in found]

    if failure_time is None:
        before, after = acked, []
    else:
        before = [r for r in acked if record_time(r) <= failure_time]
        after = [r for r in acked if record_time(r) > failure_time]
    missing_ids = {r["request_id"] for r in missing}
    lost_before = [r for r in before if r["request_id"] in missing_ids]
    lost_after = [r for r in after if r["request_id"] in missing_ids]
    last_acked = record_time(before[-1]) if before else None
    surviving = [r for r in before if r["request_id"] not in missing_ids]
    last_surviving = record_time(surviving[-1]) if surviving else None
    rpo, lower_bound = None, False
    if before:
        if not lost_before:
            rpo = 0.0
        elif last_surviving is not None:
            rpo = (last_acked - last_surviving).total_seconds()
        else:
            rpo, lower_bound = (last_acked - record_time(before[0])).total_seconds(), True

    first_after = after[0] if after else None
    rto = None
    if failure_time is not None and first_after is not None:
        rto = (record_time(first_after) - failure_time).total_seconds()

    extra_ids = None
    if extra is not None:
        known = {r["request_id"] for r in journal.acks} | {r["request_id"] for r in journal.unknowns}
        extra_ids = sorted(set(extra) - known)

    return Report(
        journal=journal.path,
        run_ids=journal.run_ids,
        acked=acked,
        present=present,
        missing=missing,
        mismatched=mismatched,
        unknown_found=unknown_found,
        unknown_missing=unknown_missing,
        extra=extra_ids,
        failure_time=failure_time,
        failure_time_source=source,
        last_acked_before_failure=last_acked,
        last_surviving_before_failure=last_surviving,
        lost_before_failure=lost_before,
        lost_after_failure=lost_after,
        rpo_seconds=rpo,
        rpo_is_lower_bound=lower_bound,
        first_ack_after_failure=first_after,
        rto_seconds=rto,
        outages=outages(journal.records),
    )


def lookup(conn, request_ids: Iterable[str]) -> dict[str, str]:
    """request_id -> audit_logs.event_type for those of ``request_ids`` the database has."""
    ids = list(dict.fromkeys(request_ids))
    found: dict[str, str] = {}
    with conn.cursor() as cur:
        for start in range(0, len(ids), LOOKUP_CHUNK):
            cur.execute(
                "SELECT request_id::text, event_type FROM audit_logs WHERE request_id = ANY(%s::uuid[])",
                (ids[start : start + LOOKUP_CHUNK],),
            )
            found.update(cur.fetchall())
    return found


def run_rows(conn, run_ids: Iterable[str]) -> set[str]:
    """Every request_id the database holds for the given generator runs (a sequential scan of audit_logs)."""
    with conn.cursor() as cur:
        cur.execute("SELECT request_id::text FROM audit_logs WHERE details->>'run_id' = ANY(%s)", (list(run_ids),))
        return {row[0] for row in cur.fetchall()}


def compare(
    journal: Journal | str,
    db,
    *,
    failure_time: datetime | str | None = None,
    run_id: str | None = None,
    scan_runs: bool = True,
    allow_torn_tail: bool = False,
) -> Report:
    """Compare a journal (a Journal or a path) with a database (a psycopg2 connection or a DSN)."""
    if not isinstance(journal, Journal):
        journal = Journal.load(journal, run_id=run_id, allow_torn_tail=allow_torn_tail)
    elif run_id is not None:
        journal = Journal(records=[r for r in journal.records if r["run_id"] == run_id], path=journal.path)
    if isinstance(failure_time, str):
        failure_time = parse_ts(failure_time)
    own = isinstance(db, str)
    try:
        conn = psycopg2.connect(db) if own else db
    except psycopg2.Error as exc:
        raise CompareError(f"cannot connect to the database: {str(exc).strip()}") from exc
    try:
        ids = [r["request_id"] for r in journal.acks] + [r["request_id"] for r in journal.unknowns]
        found = lookup(conn, ids)
        extra = run_rows(conn, journal.run_ids) if scan_runs and journal.run_ids else None
        if own:
            conn.rollback()
    except psycopg2.Error as exc:
        raise CompareError(f"cannot read audit_logs: {str(exc).strip()}") from exc
    finally:
        if own:
            conn.close()
    return assess(journal, found, failure_time=failure_time, extra=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drlab.compare",
        description="Look every journalled write up in a database: data lost (RPO) and write outage (RTO).",
    )
    parser.add_argument("--journal", required=True, help="the generator's journal")
    parser.add_argument("--dsn", required=True,
                        help="libpq DSN or URI without a password (use PGPASSFILE / PGPASSWORD / passfile=)")
    parser.add_argument("--failure-time", help="when the fault was injected (ISO 8601 with offset)")
    parser.add_argument("--run-id", help="only this generator run of the journal")
    parser.add_argument("--no-run-scan", action="store_true",
                        help="skip the scan of audit_logs for rows of these runs that were never journalled")
    parser.add_argument("--allow-torn-tail", action="store_true",
                        help="ignore an incomplete last journal line (the generator was killed mid-write)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--list-present", action="store_true", help="with --json, list the surviving request_ids")
    parser.add_argument("--fail-on-loss", action="store_true", help="exit 3 when an acknowledged write is missing")
    args = parser.parse_args(argv)
    try:
        if "password" in psycopg2.extensions.parse_dsn(args.dsn):
            parser.error("--dsn carries a password, visible in the process list: use PGPASSFILE or PGPASSWORD")
    except psycopg2.ProgrammingError as exc:
        parser.error(f"--dsn is not a valid libpq connection string: {exc}")
    try:
        failure_time = parse_ts(args.failure_time) if args.failure_time else None
    except ValueError as exc:
        parser.error(f"--failure-time: {exc}")
    try:
        report = compare(
            args.journal,
            args.dsn,
            failure_time=failure_time,
            run_id=args.run_id,
            scan_runs=not args.no_run_scan,
            allow_torn_tail=args.allow_torn_tail,
        )
    except (JournalError, CompareError) as exc:
        print(f"drlab.compare: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(report.as_dict(list_present=args.list_present), indent=2))
    else:
        print(report.render())
    return EXIT_LOSS if args.fail_on_loss and report.missing else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
