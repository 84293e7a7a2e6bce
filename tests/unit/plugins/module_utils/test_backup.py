import datetime
import io
import json
import tarfile

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import retention as backup_retention
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import tar as backup_tar
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import s3 as repo_s3
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


# -- names -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a/../b", "-rf", ".hidden", "x" * 129, "a b",
                                 "weekly..1", "a\\b", "a\x00b", "ümlaut"])
def test_names_refuse_path_tricks(bad):
    with pytest.raises(ValueError, match="not allowed"):
        repo_base.validate_name(bad)


@pytest.mark.parametrize("good", ["weekly-2026-W48", "20261127T105548F", "a.b_c-d", "_x"])
def test_names_accept_labels(good):
    assert repo_base.validate_name(good) == good


@pytest.mark.parametrize("prefix, expected", [("", ""), ("/auth-db/", "auth-db"), ("a/b", "a/b")])
def test_prefixes(prefix, expected):
    assert repo_base.validate_prefix(prefix) == expected


@pytest.mark.parametrize("bad", ["a/../b", "a//b", "../a"])
def test_prefixes_refuse_tricks(bad):
    with pytest.raises(ValueError):
        repo_base.validate_prefix(bad)


def test_local_repository_keys_stay_inside(tmp_path):
    repo = repo_local.LocalRepository(str(tmp_path / "repo"))
    with pytest.raises(ValueError):
        repo.put_bytes("backup/../../escape", b"x")
    assert not (tmp_path / "escape").exists()


# -- the local repository ------------------------------------------------------------------------------------------
def test_local_repository_never_overwrites_different_content(tmp_path):
    repo = repo_local.LocalRepository(str(tmp_path))
    first = repo.put_bytes("wal/0000000100000000/000000010000000000000001", b"one")
    again = repo.put_bytes("wal/0000000100000000/000000010000000000000001", b"one")
    assert again["unchanged"] and again["sha256"] == first["sha256"]
    with pytest.raises(repo_base.ObjectExists, match="refusing to overwrite"):
        repo.put_bytes("wal/0000000100000000/000000010000000000000001", b"two")
    assert repo.get_bytes("wal/0000000100000000/000000010000000000000001") == b"one"
    assert [o["key"] for o in repo.list("wal/")] == ["wal/0000000100000000/000000010000000000000001"]


def test_local_verify_finds_a_flipped_byte(tmp_path):
    repo = repo_local.LocalRepository(str(tmp_path))
    info = repo.put_bytes("backup/x/base.tar", b"a" * 1000)
    assert repo.verify("backup/x/base.tar", info["sha256"], 1000) == 1000
    path = tmp_path / "backup" / "x" / "base.tar"
    data = bytearray(path.read_bytes())
    data[500] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(repo_base.ChecksumMismatch, match="damaged"):
        repo.verify("backup/x/base.tar", info["sha256"], 1000)


# -- S3 errors, through a real botocore client with stubbed responses ----------------------------------------------
@pytest.mark.parametrize("code, words", [
    ("NoSuchBucket", "does not exist"),
    ("AccessDenied", "credentials need"),
    ("InvalidAccessKeyId", "access key is not known"),
    ("SignatureDoesNotMatch", "secret key does not match"),
])
def test_s3_errors_say_what_to_do(code, words):
    from botocore.stub import Stubber

    repo = repo_s3.S3Repository("bucket-x", prefix="auth-db", endpoint_url="http://127.0.0.1:9",
                                access_key="ak", secret_key="very-secret", region="us-east-1")
    with Stubber(repo.client) as stub:
        stub.add_client_error("list_objects_v2", service_error_code=code, http_status_code=403)
        with pytest.raises(repo_base.RepositoryError) as err:
            repo.list("backup/")
    assert words in str(err.value) and "very-secret" not in str(err.value)
    assert "s3://bucket-x/auth-db" in str(err.value)


def test_s3_unreachable_endpoint_is_a_network_error():
    repo = repo_s3.S3Repository("bucket-x", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b",
                                region="us-east-1", max_attempts=1)
    with pytest.raises(repo_base.RepositoryError, match="cannot reach the S3 endpoint"):
        repo.list("backup/")


@pytest.mark.parametrize("spec, words", [
    ({"type": "s3", "bucket": "Bad_Bucket"}, "not a valid S3 bucket name"),
    ({"type": "local", "path": "relative/dir"}, "absolute"),
    ({"type": "s3", "bucket": "ok-bucket", "sse": "AES256", "sse_kms_key_id": "k"}, "aws:kms"),
])
def test_repository_specs_are_checked(spec, words):
    with pytest.raises(ValueError, match=words):
        repo_spec.open_repository(spec)


# -- pg_basebackup argv ----------------------------------------------------------------------------------------------
CONN = {"login_host": "db1", "login_port": 5432, "login_user": "replicator", "login_password": "s3cret:pw"}


def test_argv_never_contains_the_password(tmp_path):
    argv = backup_full.basebackup_argv("/usr/bin/pg_basebackup", "/stage", CONN, "lbl")
    assert "s3cret:pw" not in " ".join(argv)
    assert argv[:12] == ["/usr/bin/pg_basebackup", "-D", "/stage", "-F", "t", "-X", "stream", "-c", "fast", "-l",
                         "lbl", "--manifest-checksums=CRC32C"]
    assert "--no-password" in argv and "--compress=server-lz4" in argv
    env, path = pg_connection.pgpass_env(CONN, str(tmp_path))
    assert env["PGPASSFILE"] == path and "PGPASSWORD" not in env
    assert (tmp_path / path.rsplit("/", 1)[1]).read_text() == "*:*:*:*:s3cret\\:pw\n"
    assert oct((tmp_path / path.rsplit("/", 1)[1]).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("extra", [["-D", "/x"], ["--pgdata=/x"], ["-Ft"], ["--compress=none"], ["-Xfetch"],
                                   ["--label=x"], ["-h", "other"], ["--no-manifest"], ["-R"], ["-Z9"]])
def test_extra_args_may_not_override_what_the_module_owns(extra):
    with pytest.raises(backup_catalog.BackupError, match="module owns"):
        backup_full.basebackup_argv("pg_basebackup", "/stage", CONN, "lbl", extra_args=extra)


def test_extra_args_that_are_allowed():
    argv = backup_full.basebackup_argv("pg_basebackup", "/stage", CONN, "lbl",
                                       extra_args=["--no-verify-checksums", "-S", "backup_slot"])
    assert argv[-3:] == ["--no-verify-checksums", "-S", "backup_slot"]


@pytest.mark.parametrize("args, expected", [
    (("lz4", "client", None, None), "client-lz4"),
    (("zstd", "server", 3, 2), "server-zstd:level=3,workers=2"),
    (("gzip", "client", 6, None), "client-gzip:level=6"),
    (("none", "client", None, None), None),
])
def test_compression_options(args, expected):
    assert backup_full.compress_option(*args) == expected


def test_compression_workers_need_zstd():
    with pytest.raises(backup_catalog.BackupError, match="zstd"):
        backup_full.compress_option("lz4", "client", None, 2)


# -- the tar walker and the manifest check ----------------------------------------------------------------------
def make_tar(files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def manifest_for(files):
    import crc32c

    return {"Files": [{"Path": n, "Size": len(d), "Checksum-Algorithm": "CRC32C",
                       "Checksum": crc32c.crc32c(d).to_bytes(4, "little").hex()} for n, d in files.items()]}


@pytest.mark.parametrize("piece", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_walker_sees_every_file_whatever_the_pieces(piece):
    files = {"backup_label": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n",
             "base/1/1234": bytes(range(256)) * 40, "global/pg_control": b"\x01" * 8192, "empty": b""}
    blob = make_tar(files)
    walker = backup_tar.TarWalker("CRC32C")
    for i in range(0, len(blob), piece):
        walker.feed(blob[i:i + piece])
    assert backup_tar.check_manifest(manifest_for(files), walker.files) == []
    assert walker.files["base/1/1234"]["size"] == 10240
    assert backup_tar.parse_backup_label(walker.kept["backup_label"].decode())["start_lsn"] == "0/2000028"


def test_manifest_check_catches_missing_changed_and_extra_files():
    files = {"a": b"aaaa", "b": b"bbbb"}
    manifest = manifest_for(files)
    walker = backup_tar.TarWalker("CRC32C")
    walker.feed(make_tar({"a": b"aaab", "c": b"cc"}))
    problems = backup_tar.check_manifest(manifest, walker.files)
    assert any("a has checksum" in p for p in problems)
    assert any("b is in the manifest but not in the backup" in p for p in problems)
    assert any("c is in the backup but not in the manifest" in p for p in problems)


def test_wal_check_needs_every_segment_of_the_range():
    manifest = {"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/4000100"}]}
    have = ["000000010000000000000002", "000000010000000000000004"]
    problems = backup_tar.check_wal(manifest, have)
    assert problems == ["WAL segment 000000010000000000000003 (needed from 0/2000028 to 0/4000100) is not in the "
                        "backup"]
    assert backup_tar.check_wal(manifest, have + ["000000010000000000000003"]) == []


def test_manifest_self_check_finds_damage():
    body = '{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n],\n'
    import hashlib

    digest = hashlib.sha256(body.encode()).hexdigest()
    raw = body + f'"Manifest-Checksum": "{digest}"}}\n'
    assert backup_tar.manifest_self_check(raw.encode()) == []
    assert backup_tar.manifest_self_check(raw.replace("Files", "Filez").encode())


# -- retention --------------------------------------------------------------------------------------------------------
def backup(day, hour=0, start="0/2000028", status="valid"):
    stop = NOW - datetime.timedelta(days=day, hours=hour)
    return {"id": stop.strftime("%Y%m%dT%H%M%SF"), "status": status, "stop_time": backup_catalog.iso(stop),
            "start_lsn": start, "stop_lsn": start, "timeline": 1}


def test_keep_full_keeps_the_newest_n():
    backups = [backup(d) for d in (28, 21, 14, 7, 0)]
    keep, delete = backup_retention.plan_retention(backups, NOW, keep_full=2)
    assert [b["id"] for b, reason in keep] == [backups[3]["id"], backups[4]["id"]]
    assert [b["id"] for b, reason in delete] == [b["id"] for b in backups[:3]]


def test_keep_days_keeps_the_backup_before_the_window():
    backups = [backup(d) for d in (28, 21, 14, 7, 0)]
    keep, dropped = backup_retention.plan_retention(backups, NOW, keep_days=10)
    reasons = {b["id"]: r for b, r in keep}
    assert set(reasons) == {backups[2]["id"], backups[3]["id"], backups[4]["id"]}
    assert "start of the 10-day window" in reasons[backups[2]["id"]]


def test_both_rules_keep_what_either_keeps():
    backups = [backup(d) for d in (28, 21, 14, 7, 0)]
    keep, dropped = backup_retention.plan_retention(backups, NOW, keep_full=4, keep_days=3)
    # keep_full=4 keeps the four newest; keep_days=3 keeps today's and the one before its window (7 days): the union
    assert [b["id"] for b, _reason in keep] == [b["id"] for b in backups[1:]]
    assert [b["id"] for b, _reason in dropped] == [backups[0]["id"]]


def test_the_newest_valid_backup_is_never_deleted():
    backups = [backup(40), backup(30), backup(20, status="incomplete")]
    keep, delete = backup_retention.plan_retention(backups, NOW, keep_days=1)
    assert [b["id"] for b, reason in keep] == [backups[1]["id"]]
    assert [b["id"] for b, reason in delete] == [backups[0]["id"]]


@pytest.mark.parametrize("kwargs, words", [({}, "needs keep_full"), ({"keep_full": 0}, "at least 1"),
                                           ({"keep_days": -1}, "negative")])
def test_retention_refuses_nonsense(kwargs, words):
    with pytest.raises(backup_catalog.BackupError, match=words):
        backup_retention.plan_retention([backup(1)], NOW, **kwargs)


def test_wal_retention_keeps_everything_from_the_oldest_kept_start():
    kept = [{"start_lsn": "0/5000028"}, {"start_lsn": "0/9000028"}]
    segments = {1: {n: {"key": wal_naming.wal_key(wal_naming.segment_name(1, n))} for n in range(1, 12)},
                2: {n: {"key": wal_naming.wal_key(wal_naming.segment_name(2, n))} for n in range(3, 7)}}
    victims = backup_retention.plan_wal_retention(kept, segments)
    assert victims == [wal_naming.wal_key(wal_naming.segment_name(1, n)) for n in range(1, 5)] + \
        [wal_naming.wal_key(wal_naming.segment_name(2, n)) for n in range(3, 5)]
    assert backup_retention.plan_wal_retention([], segments) == []


def test_streamed_wal_follows_the_same_retention_rule():
    kept = [{"start_lsn": "0/5000028"}]
    objects = [{"key": wal_naming.stream_key(wal_naming.segment_name(1, n))} for n in (3, 4, 5, 6)]
    objects += [{"key": wal_naming.piece_key(wal_naming.segment_name(1, 4), 0, 8192)},
                {"key": wal_naming.piece_key(wal_naming.segment_name(1, 7), 0, 8192)},
                {"key": "stream/00000002.history"}]
    victims = backup_retention.plan_stream_retention(kept, objects)
    assert victims == [wal_naming.stream_key(wal_naming.segment_name(1, 3)),
                       wal_naming.stream_key(wal_naming.segment_name(1, 4)),
                       wal_naming.piece_key(wal_naming.segment_name(1, 4), 0, 8192)]
    assert backup_retention.plan_stream_retention([], objects) == []


def test_recoverability_window_follows_contiguous_wal():
    record = dict(backup(1, start="0/5000028"), stop_lsn="0/5000100", wal_segment_size=16 << 20)
    segs = {1: {n: {"key": "k", "mtime": NOW} for n in (5, 6, 7, 9)}}
    window = backup_retention.recoverability([record], segs)
    assert window["backups"][0]["to_lsn"] == "0/7FFFFFF"  # segment 8 is missing: replay stops at the end of 7
    assert window["earliest"]["lsn"] == "0/5000100"


def test_catalog_ids_sort_by_time():
    a = backup_catalog.new_backup_id("F", NOW)
    b = backup_catalog.new_backup_id("F", NOW + datetime.timedelta(seconds=1))
    assert a == "20261127T120000F" and a < b


def test_the_catalog_tells_valid_incomplete_and_damaged_backups_apart(tmp_path):
    """What list_backups derives from a repository: a backup is valid only with its catalog record (written last),
    a backup whose record is missing is incomplete (with its in-progress marker, when there is one), one whose record
    cannot be read is damaged; oldest first, each naming the repository it was found in."""
    repo = repo_local.LocalRepository(str(tmp_path / "repo"), name="primary")
    done, cut, bad = backup(3), backup(2), backup(1)
    for record in (done, cut, bad):
        record.pop("status")
        repo.put_bytes(f"backup/{record['id']}/base.tar.lz4", b"tar")
    repo.put_bytes(f"backup/{done['id']}/{backup_catalog.RECORD}", json.dumps(done).encode())
    marker = {"id": cut["id"], "pid": 4242, "host": "db1"}
    repo.put_bytes(f"backup/{cut['id']}/{backup_catalog.IN_PROGRESS}", json.dumps(marker).encode())
    repo.put_bytes(f"backup/{bad['id']}/{backup_catalog.RECORD}", b'{"id": "torn')
    found = backup_catalog.list_backups(repo)
    assert [(b["id"], b["status"], b["repository"]) for b in found] == [
        (done["id"], "valid", "primary"), (cut["id"], "incomplete", "primary"), (bad["id"], "damaged", "primary")]
    assert found[0]["stop_lsn"] == done["stop_lsn"] and found[0]["timeline"] == 1  # the record as it was written
    assert found[1]["in_progress"] == marker and found[1]["objects"] == 2 and "stop_lsn" not in found[1]
    assert found[2]["problem"].startswith("catalog record unreadable")
    assert [b["id"] for b in backup_catalog.list_backups(repo, "logical")] == []  # another area, nothing there
