"""The pusher's batch listing: a segment a fresh listing does not show is pushed without reading the repository
first; one it shows is still checked (same content: present; different: refused)."""

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _wal
from ansible_collections.immersiverse.dr.plugins.module_utils import _walarchive as wa


@pytest.fixture
def setup(tmp_path):
    specs = [{"type": "local", "name": "here", "path": str(tmp_path / "r1")},
             {"type": "local", "name": "there", "path": str(tmp_path / "r2")}]
    config = wa.Config({"repository": specs[0], "offsite": specs[1:], "spool_dir": str(tmp_path / "spool")})
    seg = tmp_path / "000000010000000000000005"
    seg.write_bytes(b"wal" * 1000)
    return config, seg


def test_listing_names_the_repositories_without_the_segment(setup):
    config, seg = setup
    listings = wa._Listings(config)
    assert listings.absent_from(seg.name) == ("here", "there")
    assert listings.absent_from("00000001.history") == ()  # not a segment: always read first
    config.repositories()[1].put_bytes(_wal.wal_key(seg.name), wa.pack(seg.read_bytes(), "lz4")[0])
    assert listings.absent_from(seg.name) == ("here", "there")  # cached for a few seconds
    listings.cache.clear()
    assert listings.absent_from(seg.name) == ("here",)


def test_listed_segments_are_still_checked_and_different_content_refused(setup):
    config, seg = setup
    other = wa.pack(b"other" * 1000, "lz4")[0]
    config.repositories()[1].put_bytes(_wal.wal_key(seg.name), other)
    listings = wa._Listings(config)
    absent = listings.absent_from(seg.name)
    assert absent == ("here",)
    with pytest.raises(wa.WalArchiveError, match="different content"):
        wa.push_file(config, str(seg), absent_from=absent)
    assert config.repositories()[0].head(_wal.wal_key(seg.name)) is None  # the conflict stored nothing anywhere


def test_a_listing_that_fails_means_read_first(setup, monkeypatch):
    config, seg = setup

    def broken(self, prefix=""):
        raise repo_mod.RepositoryError("down")

    monkeypatch.setattr(repo_mod.LocalRepository, "list", broken)
    assert wa._Listings(config).absent_from(seg.name) == ()


def test_a_segment_stored_by_another_writer_inside_the_listing_window_is_never_replaced(setup):
    config, seg = setup
    listings = wa._Listings(config)
    absent = listings.absent_from(seg.name)
    assert absent == ("here", "there")
    theirs = wa.pack(b"theirs" * 1000, "lz4")[0]
    config.repositories()[0].put_bytes(_wal.wal_key(seg.name), theirs)  # after the listing, before our write
    with pytest.raises(wa.WalArchiveError, match="another writer stored"):
        wa.push_file(config, str(seg), absent_from=absent)
    assert config.repositories()[0].get_bytes(_wal.wal_key(seg.name)) == theirs


def test_the_same_content_stored_inside_the_listing_window_is_a_success(setup):
    config, seg = setup
    absent = wa._Listings(config).absent_from(seg.name)
    config.repositories()[1].put_bytes(_wal.wal_key(seg.name), wa.pack(seg.read_bytes(), "zstd")[0])
    assert wa.push_file(config, str(seg), absent_from=absent) == [("here", "stored"), ("there", "present")]


def test_local_create_is_create_only(tmp_path):
    repo = repo_mod.LocalRepository(str(tmp_path / "r"))
    assert repo.create("wal/x/000000010000000000000001", b"one") is True
    assert repo.create("wal/x/000000010000000000000001", b"two") is False
    assert repo.get_bytes("wal/x/000000010000000000000001") == b"one"
    assert repo.head("wal/x/000000010000000000000001")["sha256"] == __import__("hashlib").sha256(b"one").hexdigest()
    assert [o["key"] for o in repo.list("wal/")] == ["wal/x/000000010000000000000001"]  # no temporary left
