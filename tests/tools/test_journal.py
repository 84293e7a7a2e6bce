"""The generator's journal: round trip, fsync cadence, clear errors on malformed input, and the analysis that
drills compute RPO and RTO with."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from drlab.compare import assess
from drlab.journal import (
    Journal,
    JournalError,
    JournalWriter,
    format_ts,
    outages,
    parse_ts,
    read_journal,
)

T0 = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)


def rid() -> str:
    return str(uuid.uuid4())


class FakeFsync:
    def __init__(self):
        self.calls = 0

    def __call__(self, fd):
        self.calls += 1


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def writer(path, **kwargs):
    kwargs.setdefault("fsync", FakeFsync())
    kwargs.setdefault("clock", FakeClock())
    return JournalWriter(path, **kwargs)


def test_round_trip_keeps_every_field_and_order(tmp_path):
    path = tmp_path / "j.jsonl"
    ids = [rid() for _i in range(3)]
    with writer(path, run_id="run-1") as journal:
        journal.event("start", config={"rate": 10})
        for n, request_id in enumerate(ids):
            journal.ack(op="signup", request_id=request_id, region="primary", endpoint="127.0.0.1:15432",
                        acked_at=format_ts(T0 + timedelta(milliseconds=n)), lsn="0/3000148", xid=740 + n)
        journal.unknown(op="login", request_id=rid(), region="primary", endpoint="127.0.0.1:15432",
                        error_class="OperationalError")
        journal.event("stop", reason="duration")
    records = read_journal(path)
    assert [r["seq"] for r in records] == list(range(1, 7))
    assert {r["run_id"] for r in records} == {"run-1"}
    assert [r["type"] for r in records] == ["event", "ack", "ack", "ack", "unknown", "event"]
    assert [r["request_id"] for r in records if r["type"] == "ack"] == ids
    assert records[2]["xid"] == 741 and records[2]["lsn"] == "0/3000148"
    assert records[0]["config"] == {"rate": 10}
    assert parse_ts(records[1]["acked_at"]) == T0
    # one line per record, each a complete JSON object
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["type"] for line in lines)


def test_timestamps_are_utc_with_microseconds():
    text = format_ts(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    assert text == "2026-01-02T03:04:05.000006+00:00"
    assert parse_ts(text) == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        format_ts(datetime(2026, 1, 2))


def test_appending_runs_share_a_file(tmp_path):
    path = tmp_path / "j.jsonl"
    for run in ("a", "b"):
        with writer(path, run_id=run) as journal:
            journal.event("start")
    journal = Journal.load(path)
    assert journal.run_ids == ["a", "b"]
    assert len(Journal.load(path, run_id="b").records) == 1


@pytest.mark.parametrize(("every", "lines", "expected"), [(1, 5, 5), (3, 7, 2), (10, 9, 0), (100, 250, 2)])
def test_fsync_every_n_lines(tmp_path, every, lines, expected):
    fsync = FakeFsync()
    journal = writer(tmp_path / "j.jsonl", fsync_every=every, fsync=fsync)
    fsync.calls = 0  # the new file's directory entry was synced on open
    for _i in range(lines):
        journal.ack(op="login", request_id=rid(), region="r", endpoint="h:1", acked_at=format_ts(T0))
    assert fsync.calls == expected
    journal.close()
    # close syncs whatever is left, and only if something is left
    assert fsync.calls == expected + (1 if lines % every else 0)
    assert journal.fsync_count == fsync.calls


def test_fsync_at_least_every_interval(tmp_path):
    fsync, clock = FakeFsync(), FakeClock()
    journal = writer(tmp_path / "j.jsonl", fsync_every=1000, fsync_interval=1.0, fsync=fsync, clock=clock)
    fsync.calls = 0
    journal.ack(op="login", request_id=rid(), region="r", endpoint="h:1", acked_at=format_ts(T0))
    assert fsync.calls == 0
    clock.now += 1.5
    journal.ack(op="login", request_id=rid(), region="r", endpoint="h:1", acked_at=format_ts(T0))
    assert fsync.calls == 1


def test_events_and_unknowns_are_synced_at_once(tmp_path):
    fsync = FakeFsync()
    journal = writer(tmp_path / "j.jsonl", fsync_every=1000, fsync=fsync)
    fsync.calls = 0
    journal.event("failure", region="primary", rediscover=True)
    journal.unknown(op="signup", request_id=rid(), region="primary", endpoint="h:1")
    assert fsync.calls == 2
    journal.close()
    assert fsync.calls == 2  # nothing left to sync


def test_new_file_syncs_its_directory(tmp_path):
    fsync = FakeFsync()
    writer(tmp_path / "j.jsonl", fsync=fsync).close()
    assert fsync.calls == 1
    fsync.calls = 0
    writer(tmp_path / "j.jsonl", fsync=fsync).close()  # existing file: nothing to make durable
    assert fsync.calls == 0


def test_two_writers_cannot_share_a_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    with writer(path), pytest.raises(JournalError, match="locked by another writer"):
        writer(path)
    writer(path).close()  # released on close


def test_writer_refuses_a_torn_tail(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"type":"event","run_id":"a","seq":1,"event":"start","at":"2026-11-27T08:00:00+00:00"}\n{"ty')
    with pytest.raises(JournalError, match="incomplete line"):
        writer(path)


def test_closed_writer_refuses_writes(tmp_path):
    journal = writer(tmp_path / "j.jsonl")
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        journal.event("start")


GOOD = '{"type":"event","run_id":"a","seq":1,"event":"start","at":"2026-11-27T08:00:00.000000+00:00"}'


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"type":"commit","run_id":"a","seq":2}', "unknown record type 'commit'"),
        ('{"type":"ack","run_id":"a","seq":2,"op":"login"}', "ack record lacks request_id, region, endpoint, acked_at"),
        (
            (
                '{"type":"ack","run_id":"a","seq":2,"op":"login","request_id":"nope","region":"r","endpoint":"h:1",'
                '"acked_at":"2026-11-27T08:00:00+00:00"}'
            ),
            "request_id 'nope' is not a UUID",
        ),
        ('{"type":"event","run_id":"a","seq":2,"event":"stop","at":"2026-11-27 08:00:00"}', "no UTC offset|not an ISO"),
        ("", "blank line"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "j.jsonl"
    path.write_text(f"{GOOD}\n{bad_line}\n{GOOD}\n")
    with pytest.raises(JournalError, match=rf"j\.jsonl:2: .*({message})"):
        read_journal(path)


def test_torn_last_line_is_an_error_unless_allowed(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(f'{GOOD}\n{{"type":"ack","run_id":"a","se')
    with pytest.raises(JournalError, match=r"j\.jsonl:2: not valid JSON"):
        read_journal(path)
    assert len(read_journal(path, allow_torn_tail=True)) == 1


def test_missing_journal_is_a_clear_error(tmp_path):
    with pytest.raises(JournalError, match="cannot read journal .*nope.jsonl"):
        read_journal(tmp_path / "nope.jsonl")


# -- analysis ------------------------------------------------------------------------------------------------------
def _journal(tmp_path, script):
    """script: list of ("ack", seconds, region) / ("failure", seconds, region) / ("unknown", seconds, region)."""
    path = tmp_path / "j.jsonl"
    ids = []
    with writer(path, run_id="run") as journal:
        for kind, seconds, region in script:
            at = format_ts(T0 + timedelta(seconds=seconds))
            if kind == "ack":
                request_id = rid()
                ids.append(request_id)
                journal.ack(op="login", request_id=request_id, region=region, endpoint="h:1", acked_at=at)
            elif kind == "unknown":
                journal.unknown(op="login", request_id=rid(), region=region, endpoint="h:1", at=at)
            else:
                journal.event("failure", at=at, region=region, error_class="OperationalError", rediscover=True)
    return Journal.load(path), ids


def test_outages_from_failure_to_next_ack(tmp_path):
    journal, _lines = _journal(tmp_path, [
        ("ack", 0, "primary"), ("failure", 1, "primary"), ("failure", 1.5, "primary"),
        ("ack", 3.25, "secondary"), ("failure", 10, "secondary"),
    ])
    found = outages(journal.records)
    assert [(o.failed_region, o.recovered_region, o.seconds) for o in found] == [
        ("primary", "secondary", 2.25),
        ("secondary", None, None),
    ]


def test_assess_rpo_rto_and_losses(tmp_path):
    journal, ids = _journal(tmp_path, [
        ("ack", 0, "primary"), ("ack", 1, "primary"), ("ack", 2, "primary"), ("ack", 3, "primary"),
        ("failure", 3.5, "primary"), ("ack", 5, "secondary"), ("ack", 6, "secondary"),
    ])
    # writes at 2 s and 3 s were lost in the failover
    present = {i: "login" for i in ids[:2] + ids[4:]}
    report = assess(journal, present)
    assert report.failure_time_source == "first failure event in the journal"
    assert [r["request_id"] for r in report.missing] == ids[2:4]
    assert report.rpo_seconds == 2.0  # last acked before the failure (3 s) - last surviving (1 s)
    assert report.newest_lost_acked_at == T0 + timedelta(seconds=3)
    assert report.rto_seconds == 1.5  # first ack after (5 s) - failure (3.5 s)
    # an externally given failure time wins
    report = assess(journal, present, failure_time=T0 + timedelta(seconds=3, milliseconds=200))
    assert report.failure_time_source == "given"
    assert report.rto_seconds == pytest.approx(1.8)
    # nothing lost: RPO 0; everything lost: a lower bound
    assert assess(journal, dict.fromkeys(ids, "login")).rpo_seconds == 0.0
    report = assess(journal, {i: "login" for i in ids[4:]})
    assert report.rpo_is_lower_bound and report.rpo_seconds == 3.0
