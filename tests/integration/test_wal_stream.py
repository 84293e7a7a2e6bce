"""The streamer (immersiverse-dr-wal stream: pg_receivewal with a slot, and an uploader) against a real PostgreSQL
primary and a real S3 endpoint, then a real recovery from a base backup plus what it streamed.

The streamer and the recovering server run as the postgres OS user, through the wrapper the wal_archive role
installs, as on a database host.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from conftest import PG_BIN, PgServer, _server_base_dir  # noqa: E402
from test_wal_push_fetch import Archive, as_postgres, s3_repo, wait_for  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the streamer and PostgreSQL run as the postgres user")]
SLOT = "test_stream"


@pytest.fixture
def work():
    path = Path(__import__("tempfile").mkdtemp(prefix="drtest-stream-"))
    path.chmod(0o711)
    yield path
    pid_file = path / "stream" / "stream.pid"
    if pid_file.exists():  # a detached streamer left by a failed test: stop exactly that one
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(path, ignore_errors=True)


def streaming_setup(server: PgServer, work: Path, repos: list[dict], **stream) -> Archive:
    passfile = work / "stream.pgpass"
    shutil.copy(server.pgpass, passfile)
    os.chown(passfile, pwd.getpwnam("postgres").pw_uid, -1)
    passfile.chmod(0o600)
    conninfo = (f"host=127.0.0.1 port={server.port} user=postgres passfile={passfile} "
                "target_session_attrs=read-write connect_timeout=3")
    return Archive(work / "a", repos, stream={"conninfo": conninfo, "slot": SLOT, "dir": str(work / "stream"),
                                              "pg_bin_dir": str(PG_BIN), "upload_interval": 0.2, **stream})


def start_streamer(archive: Archive) -> subprocess.Popen:
    as_postgres(Path(archive.doc["stream"]["dir"]))
    return subprocess.Popen(["runuser", "-u", "postgres", "--", str(archive.wrapper), "stream"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_streamer(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=10)[1]


def status(archive: Archive) -> dict:
    out = archive.run("stream", "--status")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def slot(server: PgServer) -> tuple | None:
    rows = server.psql("SELECT active, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = %s",
                       (SLOT,))
    return rows[0] if rows else None


def keys(repo, prefix: str) -> list[str]:
    return [o["key"] for o in repo.list(prefix)]


def test_streamed_segments_and_partial_end_a_recovery_at_the_last_commit(pg_server_factory, s3_endpoint, work):
    primary = pg_server_factory("stream-primary")
    repos = [s3_repo(s3_endpoint, s3_endpoint.create_bucket(), "secondary"),
             {"type": "local", "name": "tertiary", "path": str(as_postgres(work / "local-repo"))}]
    archive = streaming_setup(primary, work, repos)
    streamer = start_streamer(archive)
    recovered = None
    try:
        wait_for(lambda: status(archive).get("receivewal") == "streaming" and slot(primary) == (True, True), 30,
                 "the streamer streaming through its slot")
        # a base backup taken while the streamer runs: everything after it is in stream/ only (no archive_command)
        recovered = PgServer(_server_base_dir(None, "stream-recovered"), name="stream-recovered",
                             settings={"restore_command": f"'{archive.wrapper} fetch --partial %f %p'",
                                       "recovery_target_timeline": "'latest'"})
        recovered.run_dir.mkdir(parents=True)
        as_postgres(recovered.run_dir)
        as_postgres(recovered.data_dir)
        recovered.base_dir.chmod(0o711)
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_basebackup"), "-D",
                        str(recovered.data_dir), "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                        "-X", "stream", "-c", "fast", "--no-sync"],
                       env={**os.environ, "PGPASSWORD": primary.password}, check=True, capture_output=True,
                       timeout=120)
        primary.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        for batch in range(3):  # whole segments
            primary.psql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(%s, %s) g",
                         (batch * 1000 + 1, batch * 1000 + 1000))
            primary.psql("SELECT pg_switch_wal()")
        last = 3000
        for _row in range(50):  # then single commits that stay in the growing segment
            last += 1
            primary.psql("INSERT INTO t VALUES (%s, 'tail')", (last,))
        current, offset = primary.psql("SELECT file_name, file_offset FROM "
                                       "pg_walfile_name_offset(pg_current_wal_lsn())")[0]
        # what a streamed partial must hold of the last commit: its bytes up to the zero padding after it
        with open(primary.data_dir / "pg_wal" / current, "rb") as fh:
            needed = len(fh.read(offset).rstrip(b"\0"))
        repositories = archive.engine_config().repositories()

        def stored_everywhere() -> bool:
            ends = [wal_naming.cover([span for span in map(wal_naming.parse_piece_key,
                                                           keys(repo, wal_naming.partial_prefix(current))) if span])[1]
                    for repo in repositories]
            return min(ends) >= needed

        wait_for(stored_everywhere, 30, f"the last commit (byte {needed} of {current}) uploaded to every repository")
        primary.kill()  # crash: nothing more leaves the primary

        config = archive.engine_config()
        here = config.repositories()[0]
        completed = {k.rsplit("/", 1)[1] for k in keys(here, "stream/") if wal_naming.SEGMENT_RE.match(k.rsplit("/",
                                                                                                                1)[1])}
        assert len(completed) >= 3, completed
        assert current not in completed and not keys(here, "wal/"), "the last segment exists only as pieces"
        pieces = keys(here, wal_naming.partial_prefix(current))
        assert pieces, "the partial of the current segment was not uploaded"
        for repo in config.repositories()[1:]:  # offsite too
            assert completed <= {k.rsplit("/", 1)[1] for k in keys(repo, "stream/")}
        assert len(list((work / "stream" / "wal").iterdir())) <= 3, "completed segments leave the spool"

        seg = as_postgres(work / "restored") / "seg"
        plain = archive.run("fetch", current, str(seg))
        assert plain.returncode == 1, "without --partial a partial is not served"
        served = archive.run("fetch", "--partial", current, str(seg))
        assert served.returncode == 0, served.stderr
        assert seg.stat().st_size == 16 * 1024 * 1024
        one = sorted(completed)[-1]
        assert archive.run("fetch", one, str(seg)).returncode == 0, "stream/ serves a missing wal/ segment"

        (recovered.data_dir / "recovery.signal").touch()
        with open(recovered.data_dir / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in recovered.settings.items())
        recovered._add_pgpass("postgres", primary.password)
        recovered.password = primary.password
        recovered.start(timeout=120)
        wait_for(lambda: recovered.psql("SELECT NOT pg_is_in_recovery()")[0][0], 120, "the end of recovery")
        assert recovered.psql("SELECT count(*), max(id) FROM t")[0] == (last, last), \
            "the recovery ended before the last acknowledged commit"
        log = recovered.log_file.read_text()
        assert f"restored log file \"{current}\" from archive" in log
    finally:
        err = stop_streamer(streamer)
        if recovered is not None:
            recovered.destroy()
    assert primary.password not in err, "the streamer's output shows the password"


def test_the_streamer_follows_a_restart_of_the_primary_and_stops_cleanly(pg_server_factory, work):
    primary = pg_server_factory("stream-restart")
    repo_dir = as_postgres(work / "repo")
    archive = streaming_setup(primary, work, [{"type": "local", "name": "secondary", "path": str(repo_dir)}],
                              retry_max_seconds=2)
    as_postgres(Path(archive.doc["stream"]["dir"]))
    started = archive.run("stream", "--ensure")  # what cron runs every minute: detached, once
    assert started.returncode == 0, started.stderr
    assert archive.run("stream", "--ensure").returncode == 0
    try:
        wait_for(lambda: status(archive).get("receivewal") == "streaming" and slot(primary) == (True, True), 30,
                 "the streamer streaming through its slot")
        pids = subprocess.run(["pgrep", "-f", f"pg_receivewal --directory {work}"], capture_output=True, text=True,
                              check=False)
        assert len(pids.stdout.split()) == 1, "exactly one pg_receivewal"

        primary.restart()
        primary.psql("CREATE TABLE r AS SELECT g FROM generate_series(1, 20000) g")
        (name,) = primary.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0]
        primary.psql("SELECT pg_switch_wal()")
        config = archive.engine_config()
        wait_for(lambda: config.repositories()[0].head(wal_naming.stream_key(name)), 60,
                 "the segment after the restart in stream/")
        assert status(archive)["running"]
    finally:
        stopped = archive.run("stream", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not status(archive)["running"]
    wait_for(lambda: slot(primary) == (False, True), 10, "the slot inactive once the streamer stopped")
    # what the role does when streaming is turned off
    primary.psql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                 "WHERE slot_name = %s AND NOT active", (SLOT,))
    assert slot(primary) is None
    log = (work / "stream" / "stream.log").read_text()
    assert "streamer stopped" in log and primary.password not in log
