"""WAL archiving and fetching with a region's store degraded, against real PostgreSQL 15 running the installed
wrapper as the postgres user (as on a database host):

- one repository unusable, an offsite one or this region's own (the first): archiving carries on into the others,
  the region that is down is owed the segments (status.json), and once it is back `immersiverse-dr-wal backfill`
  makes every repository complete;
- every repository unusable with a small queue_max_bytes: pg_wal's ready queue stops growing at the bound and the
  dropped segments are recorded as a gap (gaps.jsonl);
- an S3 endpoint paused (SIGSTOP: connects succeed, nothing answers): a streaming standby whose restore_command is
  `fetch --unreachable missing` restarts, streams and replays the primary's new rows within seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from conftest import S3Endpoint, _start_moto, free_port, stop_process  # noqa: E402
from test_wal_push_fetch import (  # noqa: E402
    Archive,
    archiver,
    archiving_server,
    as_postgres,
    s3_repo,
    segment_names,
    stored_names,
    wait_for,
)

from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs the command as the postgres user")]
SEGMENT = 16 * 1024 * 1024


def pusher_running(spool: Path) -> bool:
    """The background pusher holds this lock while it runs."""
    lock = spool / "pusher.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="drtest-degraded-"))
    path.chmod(0o711)
    yield path
    # a pusher exits by itself once pg_wal is gone or idle (idle_exit_seconds=5): wait for it, kill nothing
    deadline = time.monotonic() + 20
    while pusher_running(path / "a" / "spool") and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(path, ignore_errors=True)


def status(archive: Archive) -> dict:
    out = archive.run("status")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def segments_between(first: str, last: str) -> set[str]:
    tl, lo = wal_naming.parse_segment(first)
    hi = wal_naming.parse_segment(last)[1]
    return {wal_naming.segment_name(tl, n) for n in range(lo, hi + 1)}


@pytest.mark.parametrize("down_at", [1, 0], ids=["offsite-down", "home-down"])
def test_a_region_down_never_stops_archiving_and_the_backfill_completes_it(
        pg_server_factory, s3_endpoint, work, down_at):
    down_dir = as_postgres(work / "region-down")
    repos = [s3_repo(s3_endpoint, s3_endpoint.create_bucket(), "up1"),
             s3_repo(s3_endpoint, s3_endpoint.create_bucket(), "up2")]
    repos.insert(down_at, {"type": "local", "name": "down", "path": str(down_dir)})
    archive = Archive(work / "a", repos)
    server = archiving_server(pg_server_factory, archive, "wal-region-down")
    try:
        before = segment_names(server, 2)
        wait_for(lambda: archiver(server)["last"] >= before[-1] and archiver(server)["ready"] == 0, 60,
                 "archiving before the outage")
        down_dir.chmod(0)  # that region's store: neither readable nor writable by postgres
        during = segment_names(server, 5)
        wait_for(lambda: archiver(server)["last"] >= during[-1] and archiver(server)["ready"] == 0, 90,
                 "archiving through the outage")
        assert archiver(server)["failed"] == 0, "one region down must not fail the archive_command"
        config = archive.engine_config()
        by_name = {repo.name: repo for repo in config.repositories()}
        assert set(during) <= stored_names(by_name["up1"]) and set(during) <= stored_names(by_name["up2"])
        owed = set(os.listdir(archive.spool / "owed" / "down"))
        assert set(during) <= owed, "every segment archived during the outage is owed to the region that is down"
        state = status(archive)["repositories"]
        assert state["down"]["owed"] == len(owed) and state["down"]["oldest_owed"] == min(owed)
        assert state["down"]["role"] == ("home" if down_at == 0 else "offsite")
        assert "Permission denied" in state["down"]["last_error"] and state["down"]["failures"] >= 1
        assert state["up1"]["owed"] == 0 and state["up2"]["owed"] == 0 and state["up1"]["last_success_time"]
        assert status(archive)["gap"] is None, "nothing is dropped while a region takes the segments"
        still = archive.run("backfill")
        assert still.returncode == 1 and f"still owed to down: {len(owed)} segment(s)" in still.stdout, still

        down_dir.chmod(0o700)  # back
        done = archive.run("backfill")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.endswith("nothing owed\n")
        first = min(n for n in stored_names(by_name["up1"]) if wal_naming.SEGMENT_RE.match(n))
        expected = segments_between(first, during[-1])
        for repo in config.repositories():
            got = stored_names(repo)
            assert expected <= got, f"{repo.name} lacks {sorted(expected - got)[:3]}"
        assert not os.listdir(archive.spool / "owed" / "down")
        assert status(archive)["repositories"]["down"]["owed"] == 0
        reconciled = archive.run("backfill", "--reconcile")
        assert reconciled.returncode == 0 and reconciled.stdout.endswith("nothing owed, nothing missing\n"), \
            reconciled
    finally:
        down_dir.chmod(0o700)
        server.destroy()


def test_with_every_repository_down_pg_wal_stops_growing_at_the_bound_and_the_gap_is_recorded(
        pg_server_factory, work):
    home_dir = as_postgres(work / "home")
    away_dir = as_postgres(work / "away")
    bound_segments = 3
    archive = Archive(work / "a", [{"type": "local", "name": "home", "path": str(home_dir)},
                                   {"type": "local", "name": "away", "path": str(away_dir)}],
                      queue_max_bytes=bound_segments * SEGMENT)
    server = archiving_server(pg_server_factory, archive, "wal-bounded")
    try:
        before = segment_names(server, 1)
        wait_for(lambda: archiver(server)["last"] >= before[-1] and archiver(server)["ready"] == 0, 60,
                 "archiving before the outage")
        home_dir.chmod(0)
        away_dir.chmod(0)
        generated = []
        most = 0
        for _round in range(8):  # bounded: eight more segments than the bound allows to wait
            generated += segment_names(server, 1)
            most = max(most, archiver(server)["ready"])  # at most the bound and the segment just completed
            # the archiver fails the oldest segment (3 tries, 1 s apart) while at the bound, drops it above the bound
            wait_for(lambda: archiver(server)["ready"] <= bound_segments, 30,
                     f"the ready queue back at the bound ({bound_segments} segments)")
        state = archiver(server)
        assert state["failed"] > 0, "at the bound the home repository's failure is a failure"
        assert state["ready"] == bound_segments and most <= bound_segments + 1, (state, most)
        gap = status(archive)["gap"]
        assert gap is not None, "the dropped segments are recorded"
        recorded = [json.loads(line)["segment"] for line in (archive.spool / "gaps.jsonl").read_text().splitlines()]
        assert recorded and recorded == sorted(recorded), "one line per dropped segment, appended in order"
        ready = {r[0][:24] for r in server.psql("SELECT name FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")}
        dropped = segments_between(gap["first"], gap["last"])
        assert gap["count"] == len(dropped) >= len(generated) - bound_segments
        assert not dropped & ready and max(dropped) < min(ready), "the oldest are dropped, the newest wait"
        assert gap["queue_max_bytes"] == bound_segments * SEGMENT and gap["last_time"] >= time.time() - 120
        log = server.log_file.read_text()
        assert "WAL DROPPED, NOT ARCHIVED" in log and "take a new full backup" in log
        home_dir.chmod(0o700)
        away_dir.chmod(0o700)
        config = archive.engine_config()
        for repo in config.repositories():
            assert not dropped & stored_names(repo), f"a dropped segment was stored in {repo.name}"
    finally:
        home_dir.chmod(0o700)
        away_dir.chmod(0o700)
        server.destroy()


def test_a_standby_restarts_and_streams_through_an_s3_pause(pg_server_factory, work):
    """restore_command `fetch %f %p --unreachable missing` against an S3 endpoint that is SIGSTOPped: the standby,
    restarted meanwhile (it asks restore_command at startup), is up, in recovery, streaming and has the primary's
    new rows within 30 s. Before: each request waited out botocore's 60 s read timeout, times its retries."""
    port = free_port()
    endpoint = S3Endpoint("s3", port, _start_moto(port, work / "moto.log"), work / "moto.log")
    paused = False
    primary = standby = None
    try:
        bucket = endpoint.create_bucket("pause-bucket")
        spec = s3_repo(endpoint, bucket, "home")
        del spec["max_attempts"]  # as the role writes it: botocore's standard retries
        archive = Archive(work / "a", [spec])
        primary = pg_server_factory("pause-primary")
        primary.psql("CREATE TABLE t (id int PRIMARY KEY)")
        standby = pg_server_factory.standby(primary, "pause-standby")
        with open(standby.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"restore_command = '{archive.wrapper} fetch %f %p --unreachable missing'\n"
                       "wal_retrieve_retry_interval = '1s'\n")
        standby.restart()  # with restore_command, S3 answering
        wait_for(lambda: receiver(standby) == "streaming", 30, "the standby streaming before the pause")

        os.kill(endpoint.process.pid, signal.SIGSTOP)
        paused = True
        started = time.monotonic()
        # its startup asks restore_command for the next timeline's history and the segment it starts from; pg_ctl
        # waits (up to 30 s) until it accepts connections, i.e. until recovery got past those requests
        try:
            standby.restart()
        except subprocess.CalledProcessError:
            pytest.fail("the standby did not accept connections within 30 s of its restart while S3 was paused: "
                        "its startup process waited on restore_command")
        primary.psql("INSERT INTO t SELECT generate_series(1, 1000)")
        wait_for(lambda: rows(standby) == 1000, max(1.0, 30 - (time.monotonic() - started)),
                 "the primary's new rows on the standby while S3 is paused")
        took = time.monotonic() - started
        assert took < 30, f"{took:.1f} s"
        assert standby.psql("SELECT pg_is_in_recovery()")[0][0] is True
        assert receiver(standby) == "streaming"
        assert "answered 'not archived' (--unreachable missing)" in standby.log_file.read_text(), \
            "the standby's restore_command never met the paused endpoint"
        one = time.monotonic()
        probe = subprocess.run(["runuser", "-u", "postgres", "--", str(archive.wrapper), "fetch",
                                wal_naming.segment_name(1, 0x99), str(work / "a" / "probe"), "--unreachable",
                                "missing"],
                               capture_output=True, text=True, timeout=30, check=False)
        assert probe.returncode == 1 and "answered 'not archived'" in probe.stderr, probe
        assert time.monotonic() - one < 10, "one fetch against the paused endpoint took too long"
    finally:
        if paused:
            os.kill(endpoint.process.pid, signal.SIGCONT)
        stop_process(endpoint.process)
        for server in (standby, primary):
            if server is not None:
                server.destroy()


def receiver(server) -> str | None:
    try:
        found = server.psql("SELECT status FROM pg_stat_wal_receiver")
    except Exception:  # noqa: BLE001 - not accepting connections yet
        return None
    return found[0][0] if found else None


def rows(server) -> int:
    try:
        return server.psql("SELECT count(*) FROM t")[0][0]
    except Exception:  # noqa: BLE001 - not accepting connections yet
        return -1
