"""Base and logical backups against real PostgreSQL 15 and a real S3 endpoint (moto's server over HTTP).

Every backup here is restored or checked with plain tools (tar, lz4, pg_verifybackup, pg_restore, postgres) and
never with the project's own code, so a broken engine cannot vouch for itself.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from conftest import PG_BIN, PgServer  # noqa: E402
from test_pg_facts import params  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import cli as backup_cli  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import logical as backup_logical  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import offsite as backup_offsite  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import retention as backup_retention  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import verify as backup_verify  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402

pytestmark = pytest.mark.integration
ANSIBLE = Path(sys.executable).with_name("ansible")


@pytest.fixture(scope="module")
def source(pg_server_factory):
    """A primary with ~20 MB of rows in a few tables, so pg_basebackup streams for a moment."""
    server = pg_server_factory("backup-src", settings={"wal_level": "replica", "max_wal_senders": "5"})
    server.psql("CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, pad text)")
    server.psql("INSERT INTO accounts SELECT g, 'user' || g || '@example.org', repeat(md5(g::text), 4) "
                "FROM generate_series(1, 100000) g")
    server.psql("CREATE TABLE audit (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), what text)")
    server.psql("INSERT INTO audit (what) SELECT 'event ' || g FROM generate_series(1, 20000) g")
    server.psql("CHECKPOINT")
    return server


def identity(server):
    from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection

    conn = pg_connection.connect(params(server))
    try:
        return backup_catalog.cluster_identity(conn)
    finally:
        conn.close()


def s3_spec(endpoint, bucket, name, prefix="auth-db"):
    return {"type": "s3", "name": name, "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint.endpoint_url,
            "region": "us-east-1", "access_key": endpoint.access_key, "secret_key": endpoint.secret_key,
            "part_size_mb": 5}


def restore_with_plain_tools(backup_dir: Path, dest: Path) -> None:
    """tar + lz4 (the CLIs) into dest, backup_manifest beside it, pg_wal.tar into pg_wal/."""
    dest.mkdir(mode=0o700, parents=True)
    (dest / "pg_wal").mkdir(mode=0o700)
    subprocess.run(f"lz4 -dc {backup_dir / 'base.tar.lz4'} | tar -x -C {dest}", shell=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest / "pg_wal"), "-f", str(backup_dir / "pg_wal.tar")], check=True)
    shutil.copy(backup_dir / "backup_manifest", dest / "backup_manifest")


def chown_postgres(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam("postgres")
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def pg_verifybackup(data: Path) -> subprocess.CompletedProcess:
    argv = [str(PG_BIN / "pg_verifybackup"), str(data)]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


def start_restored(work: Path, data: Path, original: PgServer) -> PgServer:
    server = PgServer(work / "restored", "restored")
    server.run_dir.mkdir(parents=True)
    shutil.move(str(data), str(server.data_dir))
    (server.data_dir / "backup_manifest").unlink()
    with open(server.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(f"\nport = {server.port}\nunix_socket_directories = '{server.run_dir}'\n")
    chown_postgres(server.base_dir)
    if os.geteuid() == 0:
        server.base_dir.chmod(0o711)
    server.password = original.password
    server._add_pgpass(server.user, server.password)
    server.start()
    return server


def download(endpoint, bucket, prefix, dest: Path) -> None:
    client = endpoint.client()
    dest.mkdir(parents=True, exist_ok=True)
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        client.download_file(bucket, obj["Key"], str(dest / obj["Key"].rsplit("/", 1)[-1]))


@pytest.fixture
def work(tmp_path):
    """A scratch directory the postgres OS user can reach too (pytest's are private to root)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="drtest-backup-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-q", str(path / "small")], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


# -- the tests ---------------------------------------------------------------------------------------------------
def test_local_backup_restores_with_plain_tools_and_passes_pg_verifybackup(source, work):
    repo = repo_local.LocalRepository(str(work / "repo"), name="primary")
    record = backup_full.take_backup(repo, params(source), identity(source), label="local-1")
    assert record["status"] == "valid" and record["label"] == "local-1"
    assert record["verification"]["result"] == "ok" and record["verification"]["files_checked"] > 900
    assert record["system_identifier"] == identity(source)["system_identifier"]
    listed = backup_catalog.list_backups(repo)
    assert [(b["id"], b["status"]) for b in listed] == [(record["id"], "valid")]
    backup_dir = work / "repo" / "backup" / record["id"]
    assert sorted(p.name for p in backup_dir.iterdir() if not p.name.startswith(".")) == [
        "backup.json", "backup_manifest", "base.tar.lz4", "pg_wal.tar"]
    data = work / "restore"
    restore_with_plain_tools(backup_dir, data)
    chown_postgres(data)
    verified = pg_verifybackup(data)
    assert verified.returncode == 0, verified.stderr
    restored = start_restored(work, data, source)
    try:
        assert restored.psql("SELECT count(*), max(id) FROM accounts") == [(100000, 100000)]
        assert restored.psql("SELECT count(*) FROM audit") == [(20000,)]
    finally:
        restored.destroy()


def test_s3_backup_in_two_regions_restores_with_plain_tools(source, s3_endpoint, work):
    home_bucket = s3_endpoint.create_bucket()
    away_bucket = s3_endpoint.create_bucket()
    home = repo_spec.open_repository(s3_spec(s3_endpoint, home_bucket, "primary"))
    away = repo_spec.open_repository(s3_spec(s3_endpoint, away_bucket, "secondary"))
    third = repo_local.LocalRepository(str(work / "tertiary"), name="tertiary")
    record = backup_full.take_backup(home, params(source), identity(source), staging_dir=str(work / "staging"))
    copies = [backup_offsite.copy_backup(home, away, record), backup_offsite.copy_backup(home, third, record)]
    assert [c["method"] for c in copies] == ["server-side", "streamed"]
    assert not os.listdir(work / "staging"), "staging must be emptied after the upload"
    again = backup_offsite.copy_backup(home, away, record)
    assert not again["changed"], "a copy that is already there is not made twice"
    for repo in (home, away, third):
        (valid,) = [b for b in backup_catalog.list_backups(repo) if b["status"] == "valid"]
        assert valid["id"] == record["id"]
        assert backup_verify.verify_checksums(repo, valid) == []
    # the away region's copy, fetched with boto3 alone and restored with tar + lz4 + pg_verifybackup
    got = work / "got"
    download(s3_endpoint, away_bucket, f"auth-db/backup/{record['id']}/", got)
    data = work / "restore"
    restore_with_plain_tools(got, data)
    chown_postgres(data)
    verified = pg_verifybackup(data)
    assert verified.returncode == 0, verified.stderr


def test_full_verification_runs_pg_verifybackup(source, work):
    repo = repo_local.LocalRepository(str(work / "repo"))
    record = backup_full.take_backup(repo, params(source), identity(source))
    scratch = work / "scratch"
    scratch.mkdir()
    assert backup_verify.verify_full(repo, record, str(PG_BIN), str(scratch)) == []


def test_one_flipped_byte_is_found(source, s3_endpoint, s3_bucket, work):
    repo = repo_spec.open_repository(s3_spec(s3_endpoint, s3_bucket, "primary"))
    record = backup_full.take_backup(repo, params(source), identity(source), staging_dir=str(work / "st"))
    client = s3_endpoint.client()
    key = f"auth-db/backup/{record['id']}/base.tar.lz4"
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    problems = backup_verify.verify_checksums(repo, record)
    assert len(problems) == 1 and "base.tar.lz4" in problems[0] and "damaged" in problems[0]
    # and through the module, as an operator would run it: it fails and says which file
    spec = s3_spec(s3_endpoint, s3_bucket, "primary")
    out = run_module("pg_backup_info", {"repositories": [spec], "verify": "checksums"})
    assert out["failed"] and "base.tar.lz4" in out["msg"]
    assert s3_endpoint.secret_key not in json.dumps(out)
    out = run_module("pg_backup_verify", {"repositories": [spec]})
    assert out["failed"] and "base.tar.lz4" in out["msg"] and out["verified"][0]["result"] == "failed"
    assert s3_endpoint.secret_key not in json.dumps(out)


def test_the_info_module_changes_nothing_and_the_verify_module_records_the_verdict(source, work):
    spec = {"type": "local", "name": "primary", "path": str(work / "repo")}
    record = backup_full.take_backup(repo_spec.open_repository(spec), params(source), identity(source))
    verdict = work / "repo" / "backup" / record["id"] / "verified.json"
    info = run_module("pg_backup_info", {"repositories": [spec], "verify": "checksums"})
    assert not info["changed"] and info["verified"][0]["result"] == "ok" and not verdict.exists(), info
    checked = run_module("pg_backup_verify", {"repositories": [spec]}, check=True)
    assert not checked["changed"] and checked["verified"][0]["result"] == "ok" and not verdict.exists(), checked
    verified = run_module("pg_backup_verify", {"repositories": [spec]})
    assert verified["changed"] and verified["verified"][0]["id"] == record["id"] and verdict.exists(), verified
    listed = run_module("pg_backup_info", {"repositories": [spec]})
    assert listed["repositories"][0]["backups"][0]["last_verification"]["result"] == "ok", listed


INTERRUPTED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {collections!r})
    from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
    from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
    repo = repo_local.LocalRepository({repo!r})
    conn = json.loads({conn!r})
    ident = json.loads({ident!r})
    backup_full.take_backup(repo, conn, ident, max_rate="1M", checkpoint="fast")
""")


def test_interrupted_backup_is_never_valid_and_is_cleaned_next_run(source, work):
    repo_dir = work / "repo"
    code = INTERRUPTED.format(collections=str(REPO / ".collections"), repo=str(repo_dir),
                              conn=json.dumps(params(source)), ident=json.dumps(identity(source)))
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    repo = repo_local.LocalRepository(str(repo_dir))

    def written() -> int:
        """Bytes of the base archive pg_basebackup has written so far (in staging, or already in the repository)."""
        paths = list(repo_dir.glob(".staging/*/data/base.tar.lz4")) + list(repo_dir.glob("backup/*/base.tar.lz4"))
        return max((p.stat().st_size for p in paths if p.exists()), default=0)

    deadline = time.monotonic() + 30
    while written() < 64 * 1024:  # killed half-way: part of the archive is written (--max-rate 1M: not all of it)
        assert proc.poll() is None, f"the backup ended ({proc.returncode}) before it could be interrupted"
        assert time.monotonic() < deadline, f"pg_basebackup wrote {written()} bytes of the archive in 30 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the engine and its pg_basebackup
    proc.wait(10)
    listed = backup_catalog.list_backups(repo)
    assert listed and all(b["status"] == "incomplete" for b in listed), listed
    assert not [b for b in listed if b["status"] == "valid"]
    removed = backup_catalog.clean_incomplete(repo)  # the writer's pid is gone: abandoned
    assert removed == [listed[0]["id"]]
    assert backup_catalog.list_backups(repo) == []


def test_retention_never_removes_a_backup_or_wal_that_a_kept_backup_needs(source, work):
    repo = repo_local.LocalRepository(str(work / "repo"))
    ident = identity(source)
    records = []
    for _backup_no in range(3):
        records.append(backup_full.take_backup(repo, params(source), ident))
        source.psql("SELECT pg_switch_wal()")
        time.sleep(1.1)  # ids are per second: the clock must move on (time passing, not a wait for an event)
    seg = ident["wal_segment_size"]
    # WAL the archive would hold: every segment from the first backup's start to past the last one's stop
    first = wal_naming.segment_number(records[0]["start_lsn"], seg)
    last = wal_naming.segment_number(records[-1]["stop_lsn"], seg) + 2
    for n in range(first - 2, last + 1):
        name = wal_naming.segment_name(1, n, seg)
        repo.put_bytes(wal_naming.wal_key(name), b"wal " + name.encode())
    repo.put_bytes("wal/00000002.history", b"1\t0/3000000\tno recovery target specified\n")
    before = {o["key"] for o in repo.list("wal/")}
    planned = backup_retention.apply_retention(repo, keep_full=2, check_mode=True)
    assert planned["would_delete"] == [records[0]["id"]] and planned["deleted"] == []
    assert {o["key"] for o in repo.list("wal/")} == before, "check mode deletes nothing"
    report = backup_retention.apply_retention(repo, keep_full=2)
    assert report["deleted"] == [records[0]["id"]]
    kept = [b for b in backup_catalog.list_backups(repo) if b["status"] == "valid"]
    assert [b["id"] for b in kept] == [r["id"] for r in records[1:]]
    needed_from = wal_naming.segment_number(records[1]["start_lsn"], seg)
    left = {o["key"] for o in repo.list("wal/")}
    for n in range(needed_from, last + 1):
        assert wal_naming.wal_key(wal_naming.segment_name(1, n, seg)) in left
    assert "wal/00000002.history" in left
    assert all(wal_naming.parse_segment(k.rsplit("/", 1)[1])[1] >= needed_from for k in left if "history" not in k)
    # the newest valid backup survives any policy
    backup_retention.apply_retention(repo, keep_full=1, keep_days=0)
    assert [b["id"] for b in backup_catalog.list_backups(repo)] == [records[-1]["id"]]


def test_same_label_is_idempotent_through_the_module(source, s3_endpoint, s3_bucket, work):
    spec = s3_spec(s3_endpoint, s3_bucket, "primary")
    args = {"login_host": source.host, "login_port": source.port, "login_user": source.user,
            "login_password": source.password, "ssl_mode": "disable", "repository": spec, "label": "weekly-2026-W48",
            "staging_dir": str(work / "st")}
    checked = run_module("pg_basebackup", args, check=True)
    assert checked["changed"] and checked["backup_id"] is None
    assert "--no-password" in checked["would_run"] and source.password not in json.dumps(checked)
    assert s3_endpoint.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0, "check mode wrote"
    first = run_module("pg_basebackup", args)
    assert first["changed"] and first["backup_id"], first
    second = run_module("pg_basebackup", args)
    assert not second["changed"] and second["backup_id"] == first["backup_id"]
    for out in (checked, first, second):
        text = json.dumps(out)
        assert source.password not in text and s3_endpoint.secret_key not in text


def test_bad_input_fails_clearly_and_counts_nothing(source, s3_endpoint, s3_bucket, work):
    spec = s3_spec(s3_endpoint, s3_bucket, "primary")
    base = {"login_host": source.host, "login_port": source.port, "login_user": source.user,
            "login_password": source.password, "ssl_mode": "disable", "repository": spec,
            "staging_dir": str(work / "st")}
    out = run_module("pg_basebackup", dict(base, label="../../etc"))
    assert out["failed"] and "label '../../etc' is not allowed" in out["msg"]
    out = run_module("pg_basebackup", dict(base, login_port=1))
    assert out["failed"] and "127.0.0.1" in out["msg"]
    out = run_module("pg_basebackup", dict(base, login_password="wrong-password"))
    assert out["failed"] and "password authentication failed" in out["msg"] and "wrong-password" not in out["msg"]
    out = run_module("pg_basebackup", dict(base, repository=dict(spec, bucket="no-such-bucket-here")))
    assert out["failed"] and "does not exist" in out["msg"]
    out = run_module("pg_basebackup", dict(base, extra_args=["-D", "/tmp/elsewhere"]))
    assert out["failed"] and "module owns" in out["msg"]
    out = run_module("pg_basebackup", dict(base, repository=dict(spec, prefix="auth-db/../other")))
    assert out["failed"] and "not allowed" in out["msg"]
    assert backup_catalog.list_backups(repo_spec.open_repository(spec)) == []
    # an OS error in the engine (a staging directory that cannot be made) is a sentence, not a traceback
    blocker = work / "staging-is-a-file"
    blocker.write_text("x")
    out = run_module("pg_basebackup", dict(base, staging_dir=str(blocker / "st")))
    assert out["failed"] and str(blocker) in out["msg"], out
    assert "Traceback (most recent call last)" not in json.dumps(out), out
    assert backup_catalog.list_backups(repo_spec.open_repository(spec)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_in_staging_fails_clearly_and_counts_nothing(source, s3_endpoint, s3_bucket, work):
    small = work / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        repo = repo_spec.open_repository(s3_spec(s3_endpoint, s3_bucket, "primary"))
        with pytest.raises(backup_catalog.BackupError, match="No space left on device"):
            backup_full.take_backup(repo, params(source), identity(source), staging_dir=str(small))
        assert [b for b in backup_catalog.list_backups(repo) if b["status"] == "valid"] == []
        assert repo.list("") == [], "a failed backup leaves nothing in the repository"
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_logical_backup_restores_with_pg_restore(source, s3_endpoint, s3_bucket, work):
    source.create_database("logicaldb")
    source.psql("CREATE TABLE tokens (id int PRIMARY KEY, v text); "
                "INSERT INTO tokens SELECT g, md5(g::text) FROM generate_series(1, 5000) g", dbname="logicaldb")
    repo = repo_spec.open_repository(s3_spec(s3_endpoint, s3_bucket, "primary"))
    record = backup_logical.take_logical_backup(repo, params(source), identity(source), ["logicaldb"], jobs=2,
                                                staging_dir=str(work / "st"))
    (listed,) = backup_catalog.list_backups(repo, "logical")
    assert listed["status"] == "valid" and listed["databases"] == ["logicaldb"]
    assert backup_verify.verify_checksums(repo, listed, "logical") == []
    got = work / "dump"
    download(s3_endpoint, s3_bucket, f"auth-db/logical/{record['id']}/logicaldb/", got)
    source.create_database("restoredb")
    subprocess.run([str(PG_BIN / "pg_restore"), "-j", "2", "-d", "restoredb", "-h", source.host, "-p",
                    str(source.port), "-U", source.user, "--no-password", str(got)], check=True, env=source.env(),
                   capture_output=True)
    assert source.psql("SELECT count(*) FROM tokens", dbname="restoredb") == [(5000,)]
    assert any(f["name"] == "globals.sql" for f in record["files"])


def run_module(name: str, args: dict, check: bool = False) -> dict:
    """Run a module of the collection through ansible, as an operator would; returns its JSON result."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_NOCOLOR": "1"}
    argv = [str(ANSIBLE), "localhost", "-m", f"immersiverse.dr.{name}", "-a", json.dumps(args),
            "-e", f"ansible_python_interpreter={sys.executable}"]
    if check:
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=REPO)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"ansible printed no JSON: {proc.stdout[-2000:]} {proc.stderr[-2000:]}") from None
    return doc["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_retention_skips_backups_under_object_lock_and_keeps_them_valid(source, s3_endpoint, work):
    bucket = s3_endpoint.create_bucket(ObjectLockEnabledForBucket=True)
    s3_endpoint.client().put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    repo = repo_spec.open_repository(s3_spec(s3_endpoint, bucket, "primary"))
    first = backup_full.take_backup(repo, params(source), identity(source), staging_dir=str(work / "st"))
    time.sleep(1.1)  # ids are per second: the clock must move on (time passing, not a wait for an event)
    second = backup_full.take_backup(repo, params(source), identity(source), staging_dir=str(work / "st"))
    report = backup_retention.apply_retention(repo, keep_full=1)
    assert report["deleted"] == [] and first["id"] in report["skipped"]
    assert "object lock (GOVERNANCE)" in report["skipped"][first["id"]]
    valid = [b["id"] for b in backup_catalog.list_backups(repo) if b["status"] == "valid"]
    assert valid == [first["id"], second["id"]], "a locked backup stays whole and listed"


def test_the_scheduled_command_runs_the_modules_operations(source, work, capsys):
    """immersiverse-dr-backup (what the timers run on the database host) calls the same operations as the modules: a
    full backup and its offsite copy, the catalog, and retention in every repository."""
    cfg = work / "backup.json"
    cfg.write_text(json.dumps({
        "repository": {"type": "local", "name": "primary", "path": str(work / "home")},
        "offsite": [{"type": "local", "name": "offsite", "path": str(work / "away")}],
        "connection": params(source), "pg_bin_dir": str(PG_BIN), "retention": {"keep_full": 1, "keep_days": ""}}))
    cfg.chmod(0o600)

    def command(*argv):
        assert backup_cli.main([*argv, "--config", str(cfg)]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    first = command("full")
    assert first["command"] == "full" and first["changed"] and first["backup_id"]
    assert first["offsite"] == ["offsite"]
    assert [b["id"] for b in backup_catalog.list_backups(repo_local.LocalRepository(str(work / "away")))] == [
        first["backup_id"]]
    deadline = time.monotonic() + 5
    while backup_catalog.new_backup_id() == first["backup_id"]:  # backup ids are per second
        assert time.monotonic() < deadline, "the clock did not reach the next second"
        time.sleep(0.05)
    second = command("full")
    info = command("info")  # this region's repository only
    assert info["backups"] == [first["backup_id"], second["backup_id"]]
    assert [r["name"] for r in info["repositories"]] == ["primary"]
    assert info["newest_backup"]["id"] == second["backup_id"]
    pruned = command("retention")
    assert pruned["deleted"] == 2 and pruned["changed"], pruned  # the older backup, in both repositories
    for path in (work / "home", work / "away"):
        listed = backup_catalog.list_backups(repo_local.LocalRepository(str(path)))
        assert [b["id"] for b in listed] == [second["backup_id"]]
