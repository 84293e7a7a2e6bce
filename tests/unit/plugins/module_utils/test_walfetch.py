"""Fetch across regions: a damaged copy in one region is passed over for the next region's good copy; only when no
region has a good copy does recovery stop. A name that is not a WAL file is an error whatever --unreachable says."""

import json
import time

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._wal import cli as wal_cli
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import fetch as wal_fetch
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import push as wal_push

SEG = wal_naming.segment_name(1, 7)


@pytest.fixture
def two_regions(tmp_path):
    doc = {"repository": {"type": "local", "name": "a", "path": str(tmp_path / "a")},
           "offsite": [{"type": "local", "name": "b", "path": str(tmp_path / "b")}],
           "spool_dir": str(tmp_path / "spool"), "prefetch": 0}
    (tmp_path / "wal.json").write_text(json.dumps(doc))
    config = wal_config.Config(dict(doc))
    raw = b"\x10\xd1" + b"w" * 16382
    for repo in config.repositories():
        repo.put_bytes(wal_naming.wal_key(SEG), wal_objects.pack(raw, "lz4")[0])
    return config, raw, tmp_path


def damage(repo):
    path = repo._path(wal_naming.wal_key(SEG))
    blob = bytearray(open(path, "rb").read())
    blob[-3] ^= 0xFF
    with open(path, "wb") as fh:
        fh.write(bytes(blob))


def test_a_damaged_copy_in_one_region_is_passed_over_for_the_next_regions(two_regions, capsys):
    config, raw = two_regions[:2]
    damage(config.repositories()[0])
    assert wal_fetch.fetch_raw(config, SEG) == raw
    assert "used b's copy; passed over" in capsys.readouterr().err


def test_no_good_copy_anywhere_stops_recovery(two_regions):
    config = two_regions[0]
    for repo in config.repositories():
        damage(repo)
    with pytest.raises(wal_objects.CorruptWal, match="no repository holds a good copy"):
        wal_fetch.fetch_raw(config, SEG)


@pytest.mark.parametrize("unreachable", ["missing", "abort"])
def test_a_name_that_is_no_wal_file_stops_recovery_whatever_unreachable_says(two_regions, unreachable, capsys):
    tmp = two_regions[2]
    rc = wal_cli.main(["fetch", "../../etc/passwd", str(tmp / "dest"), "--unreachable", unreachable,
                       "--config", str(tmp / "wal.json")])
    assert rc == wal_config.EXIT_ABORT
    assert "is not a WAL file name" in capsys.readouterr().err
    assert not (tmp / "dest").exists()


def segment_of(sysid, size=16384):
    """The first bytes of a PostgreSQL 15 segment: a long page header (magic 0xD110, XLP_LONG_HEADER) with sysid."""
    import struct

    page = struct.pack("<HHIQI", 0xD110, 0x0002, 1, 0x7000000, 0) + b"\0" * 4
    header = page + struct.pack("<QII", sysid, 16 << 20, 8192)
    return header + b"\0" * (size - len(header))


def test_the_system_identifier_is_read_from_a_segments_first_page():
    assert wal_naming.segment_system_identifier(segment_of(7441234567890123456)) == "7441234567890123456"
    assert wal_naming.segment_system_identifier(b"wal" * 1000) is None
    assert wal_naming.segment_system_identifier(b"") is None


def test_push_refuses_a_segment_of_another_cluster_and_stores_nothing(tmp_path):
    doc = {"repository": {"type": "local", "name": "a", "path": str(tmp_path / "a")},
           "spool_dir": str(tmp_path / "spool"), "system_identifier": "1111"}
    config = wal_config.Config(dict(doc))
    seg = tmp_path / SEG
    seg.write_bytes(segment_of(2222))
    with pytest.raises(wal_objects.ForeignWal, match="system identifier 2222, not to this archive's cluster 1111"):
        wal_push.push_file(config, str(seg))
    assert config.repositories()[0].head(wal_naming.wal_key(SEG)) is None
    seg.write_bytes(segment_of(1111))
    assert wal_push.push_file(config, str(seg)) == [("a", "stored")]


def test_fetch_never_serves_a_segment_of_another_cluster(tmp_path):
    doc = {"repository": {"type": "local", "name": "a", "path": str(tmp_path / "a")},
           "offsite": [{"type": "local", "name": "b", "path": str(tmp_path / "b")}],
           "spool_dir": str(tmp_path / "spool"), "system_identifier": "1111"}
    config = wal_config.Config(dict(doc))
    a, b = config.repositories()
    a.put_bytes(wal_naming.wal_key(SEG), wal_objects.pack(segment_of(2222), "lz4")[0])  # another cluster's, in region a
    with pytest.raises(wal_objects.CorruptWal, match="belongs to the cluster with system identifier 2222"):
        wal_fetch.fetch_raw(config, SEG)
    b.put_bytes(wal_naming.wal_key(SEG), wal_objects.pack(segment_of(1111), "lz4")[0])
    assert wal_fetch.fetch_raw(config, SEG) == segment_of(1111)


# -- a streaming standby's fetch gives up fast on a repository that does not answer -----------------------------------
def s3_spec(port, name="paused"):
    return {"type": "s3", "name": name, "bucket": "wal-bucket", "endpoint_url": f"http://127.0.0.1:{port}",
            "region": "us-east-1", "access_key": "k", "secret_key": "s"}


@pytest.fixture
def silent_endpoint():
    """A TCP port that accepts connections and never answers (the kernel completes the handshake; nobody reads):
    what a SIGSTOPped S3 server looks like to a client."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def test_fail_fast_gives_s3_short_timeouts_and_one_attempt_and_abort_stays_patient(tmp_path):
    pytest.importorskip("boto3")
    doc = {"repository": s3_spec(9), "offsite": [{"type": "local", "name": "b", "path": str(tmp_path / "b")}],
           "spool_dir": str(tmp_path / "spool"), "fetch_missing_timeout": 1.5}
    patient = wal_config.Config(dict(doc)).repositories()[0]
    assert patient.timeouts == (5.0, 60.0, 5)
    config = wal_config.Config(dict(doc))
    config.fail_fast()
    fast = config.repositories()[0]
    assert fast.timeouts == (1.5, 1.5, 0)  # botocore's max_attempts: retries after the first attempt
    assert (fast.client.meta.config.connect_timeout, fast.client.meta.config.read_timeout) == (1.5, 1.5)
    assert fast.client.meta.config.retries["total_max_attempts"] == 1
    assert config.repositories()[1].kind == "local" and config.prefetch_wait == 3.0


@pytest.mark.parametrize("how", ["flag", "configuration"])
def test_a_fetch_under_unreachable_missing_answers_not_archived_within_its_timeout(tmp_path, silent_endpoint, how,
                                                                                   capsys):
    pytest.importorskip("boto3")
    doc = {"repository": s3_spec(silent_endpoint), "spool_dir": str(tmp_path / "spool"), "prefetch": 0,
           "fetch_missing_timeout": 0.5, "fetch_unreachable": "missing" if how == "configuration" else "abort"}
    (tmp_path / "wal.json").write_text(json.dumps(doc))
    argv = ["fetch", SEG, str(tmp_path / "dest"), "--config", str(tmp_path / "wal.json")]
    if how == "flag":
        argv += ["--unreachable", "missing"]
    started = time.monotonic()
    assert wal_cli.main(argv) == 1
    took = time.monotonic() - started
    assert took < 2.5, f"a silent endpoint held the fetch {took:.1f} s"  # one 0.5 s attempt, wal/ only
    err = capsys.readouterr().err
    assert "answered 'not archived' (--unreachable missing)" in err and "cannot reach" in err
    assert not (tmp_path / "dest").exists()


def test_a_repository_that_failed_is_not_asked_again_within_one_fetch(two_regions, monkeypatch):
    from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
    from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local

    config = two_regions[0]
    name = wal_naming.segment_name(1, 9)  # in neither region
    asked = []
    real = repo_local.LocalRepository.read

    def read(self, key):
        asked.append((self.name, key.split("/")[0]))
        if self.name == "a":
            raise repo_base.RepositoryError("a: timed out")
        return real(self, key)

    monkeypatch.setattr(repo_local.LocalRepository, "read", read)
    with pytest.raises(wal_objects.WalArchiveError, match="no repository answered"):
        wal_fetch.fetch_raw(config, name, partial=True)
    assert asked == [("a", "wal"), ("b", "wal"), ("b", "stream")]


def test_an_unreadable_local_repository_is_passed_over_for_the_next_region(two_regions, monkeypatch):
    from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local

    config, raw = two_regions[:2]
    real = repo_local.LocalRepository.read

    def read(self, key):
        if self.name == "a":
            raise PermissionError(13, "Permission denied")
        return real(self, key)

    monkeypatch.setattr(repo_local.LocalRepository, "read", read)
    assert wal_fetch.fetch_raw(config, SEG) == raw


@pytest.mark.parametrize("argv, expect", [(["--unreachable", "missing"], 1), (["--unreachable=missing"], 1),
                                          (["--unreachable", "abort"], wal_config.EXIT_ABORT),
                                          ([], wal_config.EXIT_ABORT)])
def test_an_unreadable_configuration_stops_recovery_except_for_a_streaming_standby(tmp_path, argv, expect, capsys):
    rc = wal_cli.main(["fetch", SEG, str(tmp_path / "dest"), *argv, "--config", str(tmp_path / "nope.json")])
    assert rc == expect
    assert "cannot read the configuration" in capsys.readouterr().err
