"""The write journal: JSON lines, one per acknowledged write, plus events.

Three kinds of line (``type``):

``ack``
    A write whose COMMIT returned successfully. Written only after that, never before. Fields: ``op``,
    ``request_id``, ``region``, ``endpoint`` (host:port), ``acked_at``, ``lsn`` (a lower bound of the commit LSN),
    ``xid`` and, for revokes, what happened to the Kafka publish and the Redis SET.
``unknown``
    A write whose COMMIT was sent but whose result never came back (the connection died). It may or may not be in
    the database; ``drlab.compare`` finds out.
``event``
    Something a drill needs for timing: ``start``, ``connect``, ``failure``, ``reconnect``, ``split_brain``, ``stop``.

Every line carries ``run_id`` and a per-run ``seq`` (1, 2, 3, ... in write order). Each line is handed to the kernel
with one ``write()`` as soon as it is known (no user-space buffer), and fsync'ed at least every ``fsync_every``
lines, at least every ``fsync_interval`` seconds while lines keep coming, after every event, and at close.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

RECORD_TYPES = ("ack", "unknown", "event")
# Fields each type must carry (beyond "type"); anything else is optional.
REQUIRED_FIELDS = {
    "ack": ("run_id", "seq", "op", "request_id", "region", "endpoint", "acked_at"),
    "unknown": ("run_id", "seq", "op", "request_id", "region", "endpoint", "at"),
    "event": ("run_id", "seq", "event", "at"),
}
TIME_FIELDS = {"ack": "acked_at", "unknown": "at", "event": "at"}


class JournalError(Exception):
    """A journal cannot be written or read; the message says which file, which line and why."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_ts(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds, e.g. ``2026-11-27T08:24:00.123456+00:00``."""
    if moment.tzinfo is None:
        raise ValueError("refusing a naive datetime: journal timestamps are UTC")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str) -> datetime:
    """Parse a journal timestamp (or any ISO 8601 time with an offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(UTC)


def record_time(record: dict) -> datetime:
    """When a record happened: ``acked_at`` for acks, ``at`` for the rest."""
    return parse_ts(record[TIME_FIELDS[record["type"]]])


class JournalWriter:
    """Append-only writer of one run's journal lines.

    The file is opened for appending (several runs may share a file; ``run_id`` tells them apart) and locked with
    ``flock`` so two generators cannot interleave lines. A file whose last line is incomplete (a crash in the
    middle of a write) is refused rather than extended, so a torn line never ends up in the middle of a journal.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        run_id: str | None = None,
        fsync_every: int = 100,
        fsync_interval: float = 1.0,
        fsync: Callable[[int], None] = os.fsync,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fsync_every < 1:
            raise ValueError("fsync_every must be at least 1")
        if fsync_interval <= 0:
            raise ValueError("fsync_interval must be positive")
        self.path = os.fspath(path)
        self.run_id = run_id or str(uuid.uuid4())
        self.fsync_every = fsync_every
        self.fsync_interval = fsync_interval
        self._fsync = fsync
        self._clock = clock
        self.seq = 0
        self.lines_written = 0
        self.fsync_count = 0
        self._unsynced = 0
        self._last_sync = clock()
        self._fd: int | None = None

        existed = os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"journal {self.path} is locked by another writer (is a generator still running?)"
            ) from None
        size = os.fstat(fd).st_size
        if size:
            with open(self.path, "rb") as reader:
                reader.seek(size - 1)
                if reader.read(1) != b"\n":
                    os.close(fd)
                    raise JournalError(
                        f"journal {self.path} ends with an incomplete line (a writer died mid-line); "
                        "keep it for analysis and start a new journal file"
                    )
        self._fd = fd
        if not existed:
            # Make the new file's directory entry durable too, or a crash could lose the whole journal.
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                self._fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- writing ---------------------------------------------------------------------------------------------------
    def write(self, record: dict, *, sync: bool = False) -> dict:
        """Write one record as one line; returns the record with ``run_id`` and ``seq`` filled in."""
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        rtype = record.get("type")
        if rtype not in RECORD_TYPES:
            raise ValueError(f"record type must be one of {RECORD_TYPES}, not {rtype!r}")
        self.seq += 1
        line = {"type": rtype, "run_id": self.run_id, "seq": self.seq}
        line.update((k, v) for k, v in record.items() if k != "type")
        data = (json.dumps(line, separators=(",", ":"), default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.lines_written += 1
        self._unsynced += 1
        if sync or self._unsynced >= self.fsync_every or self._clock() - self._last_sync >= self.fsync_interval:
            self.sync()
        return line

    def ack(self, **fields) -> dict:
        return self.write({"type": "ack", **fields})

    def unknown(self, **fields) -> dict:
        fields.setdefault("at", format_ts(utc_now()))
        return self.write({"type": "unknown", **fields}, sync=True)

    def event(self, event: str, **fields) -> dict:
        """Events are rare and are what RTO is computed from: each one is fsync'ed at once."""
        fields.setdefault("at", format_ts(utc_now()))
        return self.write({"type": "event", "event": event, **fields}, sync=True)

    def sync(self) -> None:
        if self._fd is None or self._unsynced == 0:
            return
        self._fsync(self._fd)
        self.fsync_count += 1
        self._unsynced = 0
        self._last_sync = self._clock()

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.sync()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)  # also releases the flock

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- reading -------------------------------------------------------------------------------------------------------
def _check_record(record: object) -> str | None:
    """Return why a parsed line is not a valid record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    rtype = record.get("type")
    if rtype not in RECORD_TYPES:
        return f"unknown record type {rtype!r} (expected one of {', '.join(RECORD_TYPES)})"
    missing = [name for name in REQUIRED_FIELDS[rtype] if name not in record]
    if missing:
        return f"{rtype} record lacks {', '.join(missing)}"
    if rtype in ("ack", "unknown"):
        try:
            uuid.UUID(str(record["request_id"]))
        except ValueError:
            return f"request_id {record['request_id']!r} is not a UUID"
    stamp = record[TIME_FIELDS[rtype]]
    try:
        parse_ts(stamp)
    except (TypeError, ValueError):
        return f"{TIME_FIELDS[rtype]} {stamp!r} is not an ISO 8601 time with a UTC offset"
    return None


def iter_journal(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[dict]:
    """Yield the records of a journal file in order, validating each line.

    A malformed line raises JournalError naming the file and line. With ``allow_torn_tail`` an unparseable *last*
    line that lacks its newline (the only damage a crash in the middle of a write can do) is skipped instead.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc.strerror}") from exc
    last_index = len(lines) - 1  # after the final "\n" comes an empty element; anything else is a torn tail
    for index, raw in enumerate(lines):
        lineno = index + 1
        if index == last_index and raw == b"":
            break  # what follows the final newline
        record = None
        if not raw.strip():
            reason = "blank line"
        else:
            try:
                record = json.loads(raw)
                reason = _check_record(record)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                reason = f"not valid JSON ({exc})"
        if reason is None:
            yield record
            continue
        if index == last_index and allow_torn_tail:
            continue  # the crash-torn final line: nothing after it, no newline
        snippet = raw[:120].decode("utf-8", "replace")
        raise JournalError(f"{path}:{lineno}: {reason}: {snippet!r}")


def read_journal(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> list[dict]:
    return list(iter_journal(path, allow_torn_tail=allow_torn_tail))


@dataclass
class Journal:
    """A loaded journal with convenient views."""

    records: list[dict] = field(default_factory=list)
    path: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, *, run_id: str | None = None, allow_torn_tail: bool = False) -> Journal:
        records = read_journal(path, allow_torn_tail=allow_torn_tail)
        if run_id is not None:
            records = [r for r in records if r["run_id"] == run_id]
        return cls(records=records, path=os.fspath(path))

    @property
    def acks(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "ack"]

    @property
    def unknowns(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "unknown"]

    def events(self, name: str | None = None) -> list[dict]:
        return [r for r in self.records if r["type"] == "event" and (name is None or r["event"] == name)]

    @property
    def run_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            seen.setdefault(record["run_id"], None)
        return list(seen)


@dataclass(frozen=True)
class Outage:
    """A stretch during which the generator could not write: from a failure that made it re-discover the primary
    to its next acknowledged write (``None`` if it never wrote again in that run)."""

    run_id: str
    failed_at: datetime
    failed_region: str | None
    error_class: str | None
    recovered_at: datetime | None
    recovered_region: str | None

    @property
    def seconds(self) -> float | None:
        if self.recovered_at is None:
            return None
        return (self.recovered_at - self.failed_at).total_seconds()

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "failed_at": format_ts(self.failed_at),
            "failed_region": self.failed_region,
            "error_class": self.error_class,
            "recovered_at": format_ts(self.recovered_at) if self.recovered_at else None,
            "recovered_region": self.recovered_region,
            "seconds": self.seconds,
        }


def outages(records: Iterable[dict]) -> list[Outage]:
    """Write outages seen by the generator: each ``failure`` event with ``rediscover`` set opens one (unless one
    is already open in that run), the next ``ack`` of the same run closes it."""
    open_by_run: dict[str, dict] = {}
    found: list[Outage] = []

    def close(run_id: str, ack: dict | None) -> None:
        failure = open_by_run.pop(run_id)
        found.append(
            Outage(
                run_id=run_id,
                failed_at=record_time(failure),
                failed_region=failure.get("region"),
                error_class=failure.get("error_class"),
                recovered_at=record_time(ack) if ack else None,
                recovered_region=ack.get("region") if ack else None,
            )
        )

    for record in records:
        run_id = record["run_id"]
        if record["type"] == "event" and record["event"] == "failure" and record.get("rediscover"):
            open_by_run.setdefault(run_id, record)
        elif record["type"] == "ack" and run_id in open_by_run:
            close(run_id, record)
    for run_id in list(open_by_run):
        close(run_id, None)
    found.sort(key=lambda o: o.failed_at)
    return found
