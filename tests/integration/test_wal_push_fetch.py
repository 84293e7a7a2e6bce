"""archive_command / restore_command (immersiverse-dr-wal) against real PostgreSQL and a real S3 endpoint.

PostgreSQL runs the installed wrapper exactly as on a database host: as the postgres OS user, with the system
python3 and the collection's engine on PYTHONPATH (the wrapper is rendered from the role's own template).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from conftest import S3Endpoint, _start_moto, free_port  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import push as wal_push  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs the command as the postgres user")]
TEMPLATE = REPO / "roles" / "wal_archive" / "templates" / "immersiverse-dr-wal.j2"


def as_postgres(path: Path, mode: int = 0o700) -> Path:
    entry = pwd.getpwnam("postgres")
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)
    return path


class Archive:
    """A wrapper, its config and spool, as the wal_archive role installs them, in a scratch directory."""

    def __init__(self, root: Path, repositories: list[dict], wrapper_vars: dict | None = None, **options):
        self.root = as_postgres(root, 0o711)
        self.spool = as_postgres(root / "spool")
        self.config = root / "wal.json"
        doc = {"repository": repositories[0], "offsite": repositories[1:], "spool_dir": str(self.spool),
               "async": True, "concurrency": 4, "idle_exit_seconds": 5, "async_wait_seconds": 10, **options}
        self.config.write_text(json.dumps(doc))
        entry = pwd.getpwnam("postgres")
        os.chown(self.config, entry.pw_uid, entry.pw_gid)
        self.config.chmod(0o600)
        self.wrapper = root / "immersiverse-dr-wal"
        self.wrapper.write_text(jinja2.Template(TEMPLATE.read_text()).render(
            wal_archive_spool_dir=str(self.spool), wal_archive_install_dir=str(REPO / ".collections"),
            wal_archive_python="/usr/bin/python3", wal_archive_config_file=str(self.config), **(wrapper_vars or {})))
        self.wrapper.chmod(0o755)
        self.doc = doc

    def engine_config(self) -> wal_config.Config:
        return wal_config.Config(dict(self.doc))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", str(self.wrapper), *args], capture_output=True,
                              text=True, timeout=120, check=False)


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="drtest-wal-"))
    path.chmod(0o711)
    yield path
    subprocess.run(["umount", "-q", str(path / "small")], check=False, capture_output=True)
    subprocess.run(["pkill", "-f", str(path)], check=False)  # a pusher or prefetcher still idling
    shutil.rmtree(path, ignore_errors=True)


def s3_repo(endpoint, bucket: str, name: str) -> dict:
    return {"type": "s3", "name": name, "bucket": bucket, "prefix": "auth-db", "endpoint_url": endpoint.endpoint_url,
            "region": "us-east-1", "access_key": endpoint.access_key, "secret_key": endpoint.secret_key,
            "max_attempts": 2}


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")


def archiver(server) -> dict:
    (row,) = server.psql("SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), "
                         "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') "
                         "FROM pg_stat_archiver")
    return {"archived": row[0], "failed": row[1], "last": row[2], "ready": row[3]}


def segment_names(server, n: int) -> list[str]:
    names = []
    for i in range(n):
        server.psql(f"CREATE TABLE IF NOT EXISTS w (x int); INSERT INTO w SELECT generate_series(1, 1000 + {i})")
        (row,) = server.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        names.append(row[0])
        server.psql("SELECT pg_switch_wal()")
    return names


def stored_names(repo) -> set[str]:
    return {o["key"].rsplit("/", 1)[1] for o in repo.list("wal/")}


def archiving_server(pg_server_factory, archive: Archive, name: str):
    return pg_server_factory(name, settings={
        "wal_level": "replica", "archive_mode": "on", "archive_timeout": "0",
        "archive_command": f"'{archive.wrapper} push %p'"})


def test_every_segment_reaches_every_region_with_checksums(pg_server_factory, s3_endpoint, work):
    repos = [s3_repo(s3_endpoint, s3_endpoint.create_bucket(), "primary"),
             s3_repo(s3_endpoint, s3_endpoint.create_bucket(), "secondary"),
             {"type": "local", "name": "tertiary", "path": str(as_postgres(work / "local-repo"))}]
    archive = Archive(work / "a", repos)
    server = archiving_server(pg_server_factory, archive, "wal-all")
    try:
        names = segment_names(server, 12)
        wait_for(lambda: archiver(server)["last"] >= names[-1] and archiver(server)["ready"] == 0, 90,
                 "archiving of 12 segments")
        assert archiver(server)["failed"] == 0
        config = archive.engine_config()
        first = min(n for n in stored_names(config.repositories()[0]) if wal_naming.SEGMENT_RE.match(n))
        tl, lo = wal_naming.parse_segment(first)
        hi = wal_naming.parse_segment(names[-1])[1]
        expected = {wal_naming.segment_name(tl, n) for n in range(lo, hi + 1)}
        for repo in config.repositories():
            got = stored_names(repo)
            assert expected <= got, f"{repo.name} lacks {sorted(expected - got)[:3]}"
            for name in sorted(expected)[-3:]:
                raw = wal_objects.unpack(repo.get_bytes(wal_naming.wal_key(name)), name)  # checksum verified inside
                assert len(raw) == 16 * 1024 * 1024
    finally:
        server.destroy()


def test_an_s3_outage_loses_nothing_and_archiving_catches_up(pg_server_factory, work):
    port = free_port()
    endpoint = S3Endpoint("s3", port, _start_moto(port, work / "moto.log"), work / "moto.log")
    try:
        bucket = endpoint.create_bucket("outage-bucket")
        archive = Archive(work / "a", [s3_repo(endpoint, bucket, "primary")], async_wait_seconds=2)
        server = archiving_server(pg_server_factory, archive, "wal-outage")
        try:
            before = segment_names(server, 2)
            wait_for(lambda: archiver(server)["last"] >= before[-1], 60, "archiving before the outage")
            endpoint.stop()
            during = segment_names(server, 5)
            wait_for(lambda: archiver(server)["failed"] > 0, 60, "a failure while S3 is down")
            state = archiver(server)
            assert state["ready"] >= 5 and state["last"] < during[0], state
            for name in during:  # still on disk: nothing dropped
                assert (server.data_dir / "pg_wal" / name).exists() or state["last"] >= name
            endpoint.start()
            endpoint.create_bucket("outage-bucket")  # moto keeps nothing across a restart; S3 would
            wait_for(lambda: archiver(server)["last"] >= during[-1] and archiver(server)["ready"] == 0, 120,
                     "catching up after the outage")
            got = stored_names(archive.engine_config().repositories()[0])
            assert set(during) <= got
        finally:
            server.destroy()
    finally:
        endpoint.stop()


def test_a_push_of_different_content_under_an_existing_name_is_refused(s3_endpoint, s3_bucket, work):
    archive = Archive(work / "a", [s3_repo(s3_endpoint, s3_bucket, "primary")], **{"async": False})
    seg = as_postgres(work / "pg_wal") / "000000010000000000000042"
    seg.write_bytes(b"A" * 16384)
    os.chown(seg, pwd.getpwnam("postgres").pw_uid, -1)
    assert archive.run("push", str(seg)).returncode == 0
    assert archive.run("push", str(seg)).returncode == 0, "the same content again is a success"
    seg.write_bytes(b"B" * 16384)
    refused = archive.run("push", str(seg))
    assert refused.returncode == 1 and "refusing to overwrite" in refused.stderr
    repo = archive.engine_config().repositories()[0]
    assert wal_objects.unpack(repo.get_bytes(wal_naming.wal_key(seg.name))) == b"A" * 16384


def test_fetch_verifies_prefetches_and_says_when_a_segment_is_missing_or_damaged(s3_endpoint, s3_bucket, work):
    archive = Archive(work / "a", [s3_repo(s3_endpoint, s3_bucket, "primary")], **{"async": False, "prefetch": 4})
    config = archive.engine_config()
    src = as_postgres(work / "src")
    names = [wal_naming.segment_name(1, n) for n in range(0x10, 0x16)]
    for i, name in enumerate(names):
        (src / name).write_bytes(bytes([i]) * 65536)
        wal_push.push_file(config, str(src / name), name)
    # one flipped byte in the last object (before anything fetches it): recovery must stop there, not end early
    client = s3_endpoint.client()
    key = "auth-db/" + wal_naming.wal_key(names[5])
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[-10] ^= 0xFF
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    dest = as_postgres(work / "pg_wal")
    got = archive.run("fetch", names[0], str(dest / "RECOVERYXLOG"))
    assert got.returncode == 0, got.stderr
    assert (dest / "RECOVERYXLOG").read_bytes() == bytes([0]) * 65536
    wait_for(lambda: all((archive.spool / "fetch" / n).exists() for n in names[1:5]), 20, "prefetch of 4 segments")
    fast = archive.run("fetch", names[1], str(dest / "RECOVERYXLOG"))  # from the spool, no Python
    assert fast.returncode == 0 and (dest / "RECOVERYXLOG").read_bytes() == bytes([1]) * 65536
    missing = archive.run("fetch", wal_naming.segment_name(1, 0x99), str(dest / "RECOVERYXLOG"))
    assert (missing.returncode, missing.stderr) == (1, ""), "the end of the archive is not an error"
    shutil.rmtree(archive.spool / "fetch")
    damaged = archive.run("fetch", names[5], str(dest / "RECOVERYXLOG"))
    assert damaged.returncode == wal_config.EXIT_ABORT and "damaged" in damaged.stderr


def test_bad_targets_fail_clearly(s3_endpoint, work):
    seg_dir = as_postgres(work / "pg_wal")
    seg = seg_dir / "000000010000000000000001"
    seg.write_bytes(b"x" * 1024)
    missing_bucket = Archive(work / "a", [s3_repo(s3_endpoint, "no-such-bucket-x", "primary")], **{"async": False})
    out = missing_bucket.run("push", str(seg))
    assert out.returncode == 1 and "does not exist" in out.stderr and "secret" not in out.stderr
    bad_name = missing_bucket.run("fetch", "../../etc/passwd", str(seg_dir / "x"))
    assert bad_name.returncode == wal_config.EXIT_ABORT and "not a WAL file name" in bad_name.stderr
    no_config = subprocess.run(["runuser", "-u", "postgres", "--", "/usr/bin/python3", "-m",
                                "ansible_collections.immersiverse.dr.plugins.module_utils._wal.cli", "push",
                                str(seg), "--config", str(work / "nope.json")],
                               env={**os.environ, "PYTHONPATH": str(REPO / ".collections")},
                               capture_output=True, text=True, check=False)
    assert no_config.returncode == 1 and "cannot read the configuration" in no_config.stderr


def test_an_engine_that_cannot_start_stops_recovery_and_never_reads_as_not_archived(work):
    """PostgreSQL reads a restore_command's exit 1 as "no such file" and ends recovery there, opening early. A
    Python that cannot import the engine exits 1 too: the wrapper turns that into a stop (126), and only the engine's
    own "not archived" into 1. A streaming standby (--unreachable missing) is told "not there" and streams on."""
    repo_dir = as_postgres(work / "repo")
    archive = Archive(work / "a", [{"type": "local", "name": "primary", "path": str(repo_dir)}], **{"async": False})
    dest = as_postgres(work / "restore") / "RECOVERYXLOG"
    seg = "000000010000000000000042"
    assert archive.run("fetch", seg, str(dest), "--unreachable", "abort").returncode == 1  # really not archived
    broken = work / "broken-wrapper"
    broken.write_text(archive.wrapper.read_text().replace(str(REPO / ".collections"), str(work / "no-engine-here")))
    broken.chmod(0o755)

    def run_broken(*args):
        return subprocess.run(["runuser", "-u", "postgres", "--", str(broken), *args], capture_output=True,
                              text=True, timeout=60, check=False)

    crashed = run_broken("fetch", seg, str(dest), "--unreachable", "abort")
    assert crashed.returncode == wal_config.EXIT_ABORT, (crashed.returncode, crashed.stderr)
    assert "stopping recovery rather than ending it early" in crashed.stderr
    assert run_broken("fetch", seg, str(dest), "--unreachable", "missing").returncode == 1


def test_the_roles_restore_command_streams_on_when_the_engine_cannot_start(work):
    """The restore_command the wal_archive role sets (rendered from roles/wal_archive/tasks/main.yml with the role's
    defaults), run through a wrapper rendered as the role renders it, with an engine that cannot be imported: a
    standby's restore_command answers "not there" (1) and streams on; it never stops recovery (126), which would
    shut the standby down. Both spellings of the flag, and the wrapper's own default, say the same."""
    import shlex

    import yaml

    defaults = yaml.safe_load((REPO / "roles" / "wal_archive" / "defaults" / "main.yml").read_text())
    mode = defaults["wal_archive_fetch_unreachable"]
    assert mode == "missing"
    tasks = yaml.safe_load((REPO / "roles" / "wal_archive" / "tasks" / "main.yml").read_text())
    settings = next(t["immersiverse.dr.pg_wal_archive"] for t in tasks
                    if "restore_command" in (t.get("immersiverse.dr.pg_wal_archive") or {}))
    repo_dir = as_postgres(work / "repo")
    archive = Archive(work / "a", [{"type": "local", "name": "primary", "path": str(repo_dir)}],
                      wrapper_vars={"wal_archive_fetch_unreachable": mode}, **{"async": False})
    broken = work / "broken-wrapper"
    broken.write_text(archive.wrapper.read_text().replace(str(REPO / ".collections"), str(work / "no-engine-here")))
    broken.chmod(0o755)
    seg = "000000010000000000000042"
    dest = as_postgres(work / "restore") / "RECOVERYXLOG"

    def run(argv):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                              timeout=60, check=False)

    restore_command = jinja2.Template(settings["restore_command"]).render(
        wal_archive_command=str(broken), wal_archive_fetch_unreachable=mode)
    assert "--unreachable missing" in restore_command, restore_command
    argv = shlex.split(restore_command.replace("%f", seg).replace("%p", str(dest)))
    assert run(argv).returncode == 1, "the role's restore_command would stop a standby on an engine crash"
    assert run([str(broken), "fetch", seg, str(dest)]).returncode == 1, "the wrapper's default is the role's mode"
    assert run([str(broken), "fetch", seg, str(dest), "--unreachable=missing"]).returncode == 1
    aborted = run([str(broken), "fetch", seg, str(dest), "--unreachable=abort"])
    assert aborted.returncode == wal_config.EXIT_ABORT and "stopping recovery" in aborted.stderr
    # the working engine is told the wrapper's default too: a repository it cannot read is "not archived (yet)"
    repo_dir.chmod(0)
    try:
        unreadable = archive.run("fetch", seg, str(dest))
        assert unreadable.returncode == 1 and "answered 'not archived'" in unreadable.stderr, unreadable
        assert archive.run("fetch", seg, str(dest), "--unreachable", "abort").returncode == wal_config.EXIT_ABORT
    finally:
        repo_dir.chmod(0o700)


def test_a_full_spool_degrades_to_direct_pushes(s3_endpoint, s3_bucket, work):
    small = work / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=4", "tmpfs", str(small)], check=True)
    for i in range(8):  # use up the inodes
        try:
            (small / f"fill{i}").write_bytes(b"")
        except OSError:
            break
    archive = Archive(work / "a", [s3_repo(s3_endpoint, s3_bucket, "primary")])
    archive.doc["spool_dir"] = str(small / "spool")
    archive.config.write_text(json.dumps(archive.doc))
    seg = as_postgres(work / "pg_wal") / "000000010000000000000007"
    seg.write_bytes(b"z" * 4096)
    out = archive.run("push", str(seg))
    assert out.returncode == 0, out.stderr
    assert "unusable" in out.stderr
    repo = repo_spec.open_repository(s3_repo(s3_endpoint, s3_bucket, "primary"))
    assert wal_objects.unpack(repo.get_bytes(wal_naming.wal_key(seg.name))) == b"z" * 4096


def test_stale_spool_files_are_never_trusted(s3_endpoint, s3_bucket, work):
    archive = Archive(work / "a", [s3_repo(s3_endpoint, s3_bucket, "primary")], async_wait_seconds=1)
    repo = archive.engine_config().repositories()[0]
    seg = as_postgres(work / "pg_wal") / "000000010000000000000009"
    seg.write_bytes(b"q" * 8192)
    os.chown(seg, pwd.getpwnam("postgres").pw_uid, -1)
    # a marker left by another cluster's segment of the same name: the wrapper must not take it as "stored"
    as_postgres(archive.spool / "ok")
    (archive.spool / "ok" / seg.name).write_text("1 2 3\n")
    pushed = archive.run("push", str(seg))
    assert pushed.returncode == 0, pushed.stderr
    assert wal_objects.unpack(repo.get_bytes(wal_naming.wal_key(seg.name))) == b"q" * 8192, \
        "the segment was really stored"
    # a prefetched file from a run under another configuration (other repositories) is not replayed
    as_postgres(archive.spool / "fetch")
    (archive.spool / "fetch" / ".source").write_text("0" * 40 + "\n")
    (archive.spool / "fetch" / seg.name).write_bytes(b"not this one")
    for stale in (archive.spool / "fetch").iterdir():
        os.chown(stale, pwd.getpwnam("postgres").pw_uid, -1)
    dest = work / "pg_wal" / "RECOVERYXLOG"
    got = archive.run("fetch", seg.name, str(dest))
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == b"q" * 8192
    assert (archive.spool / "fetch" / ".source").read_text().strip() != "0" * 40


RACER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import push as wal_push
config = wal_config.Config(json.loads(sys.argv[2]))
names = [r.name for r in config.repositories()]
try:
    # absent_from: as if a listing made a moment ago showed no such segment (the pusher's batch listing), so
    # nothing is read first and only the write itself can keep the two writers apart
    print(json.dumps(wal_push.push_file(config, sys.argv[3], absent_from=names)))
except wal_objects.WalArchiveError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_two_writers_racing_for_one_name_store_exactly_one_and_the_other_is_refused(kind, s3_endpoint, work):
    """Debian's python3 and boto3 (as on the database hosts) against a real HTTP S3 endpoint, or a local directory:
    two processes push different content under one new name at the same moment, ten times."""
    if kind == "s3":
        spec = s3_repo(s3_endpoint, s3_endpoint.create_bucket(), "primary")
    else:
        spec = {"type": "local", "name": "primary", "path": str(work / "repo")}
    doc = {"repository": spec, "offsite": [], "spool_dir": str(work / "spool")}
    repo = wal_config.Config(dict(doc)).repositories()[0]
    for i in range(10):
        name = wal_naming.segment_name(1, 0x100 + i)
        segs = []
        for who in ("a", "b"):
            seg = work / who / name
            seg.parent.mkdir(exist_ok=True)
            seg.write_bytes(who.encode() * 16384)
            segs.append(seg)
        procs = [subprocess.Popen(["/usr/bin/python3", "-c", RACER, str(REPO / ".collections"), json.dumps(doc),
                                   str(seg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seg in segs]
        outs = [(p.wait(60), *p.communicate()) for p in procs]
        assert sorted(out[0] for out in outs) == [0, 1], outs
        winner = next(seg for seg, out in zip(segs, outs, strict=True) if out[0] == 0)
        loser_err = next(out[2] for out in outs if out[0] == 1)
        assert "another writer stored" in loser_err and "different content" in loser_err, loser_err
        assert wal_objects.unpack(repo.get_bytes(wal_naming.wal_key(name))) == winner.read_bytes()


def test_segments_of_another_cluster_are_refused_and_the_right_clusters_are_stored(pg_server_factory, work):
    """A real PostgreSQL 15 archiving through a configuration that names another cluster's system identifier: no
    segment is stored and PostgreSQL keeps them in pg_wal; named rightly, every one is stored."""
    repo = {"type": "local", "name": "primary", "path": str(as_postgres(work / "repo"))}
    archive = Archive(work / "a", [repo], **{"async": False, "system_identifier": "1234567890123456789"})
    server = archiving_server(pg_server_factory, archive, "wal-foreign")
    try:
        sysid = server.psql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
        names = segment_names(server, 2)
        wait_for(lambda: archiver(server)["failed"] > 0, 60, "the archiver's refusals")
        assert not {n for n in stored_names(archive.engine_config().repositories()[
            0]) if wal_naming.SEGMENT_RE.match(n)}
        assert f"belongs to the cluster with system identifier {sysid}" in server.log_file.read_text()
        doc = json.loads(archive.config.read_text())
        doc["system_identifier"] = sysid  # what the wal_archive role writes: the serving primary's
        archive.config.write_text(json.dumps(doc))
        wait_for(lambda: archiver(server)["last"] >= names[-1] and archiver(server)["ready"] == 0, 90,
                 "archiving once the configuration names this cluster")
    finally:
        server.destroy()
