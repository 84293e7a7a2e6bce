"""S3Repository.create on a versioned bucket whose server ignores If-None-Match (Ceph RGW 16.2): the first version
since the key was last deleted wins, a later writer takes its own version back. The lab test
(tests/lab/test_s3_server_lab.py) races real writers against RGW; these pin down the ordering rules."""

import datetime

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import s3 as repo_s3

T0 = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


class Server:
    """Answers the calls create() makes: every PUT adds a version (the header ignored), as RGW does."""

    def __init__(self, versions=(), markers=(), delete_refused=False, listing_denied=False):
        self.versions = list(versions)  # (version id, time), newest first
        self.markers = list(markers)
        self.delete_refused = delete_refused
        self.listing_denied = listing_denied
        self.calls = []

    def call(self, operation, _if_none_match=False, **kwargs):
        self.calls.append((operation, kwargs.get("VersionId") or kwargs.get("CopySource", {}).get("VersionId")))
        if operation == "put_object":
            assert _if_none_match
            self.versions.insert(0, ("mine", at(100)))
            return {"VersionId": "mine"}
        if operation == "list_object_versions":
            if self.listing_denied:
                raise repo_base.RepositoryError("list_object_versions failed: AccessDenied: access denied")
            return {"Versions": [{"Key": kwargs["Prefix"], "VersionId": v, "LastModified": t}
                                 for v, t in self.versions],
                    "DeleteMarkers": [{"Key": kwargs["Prefix"], "VersionId": "dm", "LastModified": t}
                                      for t in self.markers]}
        if operation == "delete_object":
            if self.delete_refused:
                raise repo_base.RepositoryError("delete_object failed: AccessDenied: object lock")
            return {}
        if operation == "copy_object":
            return {}
        raise AssertionError(operation)


def repository(server):
    repo = repo_s3.S3Repository.__new__(repo_s3.S3Repository)
    repo.bucket, repo.prefix, repo.endpoint_url, repo.put_args = "b", "auth-db", None, {}
    repo._versions_unlistable = False
    repo.call = server.call
    return repo


def test_the_only_version_is_a_create():
    server = Server()
    assert repository(server).create("wal/x", b"1") is True
    assert ("delete_object", "mine") not in server.calls


def test_an_older_version_wins_and_ours_is_taken_back():
    server = Server(versions=[("theirs", at(50))])
    assert repository(server).create("wal/x", b"1") is False
    assert ("delete_object", "mine") in server.calls


def test_a_version_deleted_before_ours_does_not_count():
    # a released runbook lock: its generation was deleted (a delete marker), then created again by us
    server = Server(versions=[("released", at(10))], markers=[at(20)])
    assert repository(server).create("locks/failover/1.json", b"1") is True


def test_a_version_after_the_last_delete_still_wins():
    server = Server(versions=[("theirs", at(30)), ("released", at(10))], markers=[at(20)])
    assert repository(server).create("locks/failover/1.json", b"1") is False


def test_object_lock_keeps_ours_so_the_winner_is_copied_over_it():
    server = Server(versions=[("second", at(60)), ("first", at(50))], delete_refused=True)
    assert repository(server).create("wal/x", b"1") is False
    assert ("copy_object", "first") in server.calls


def test_without_list_versions_permission_the_header_is_trusted():
    server = Server(versions=[("theirs", at(50))], listing_denied=True)
    repo = repository(server)
    assert repo.create("wal/x", b"1") is True
    assert repo._versions_unlistable
    repo.create("wal/y", b"1")
    assert [c for c in server.calls if c[0] == "list_object_versions"] == [("list_object_versions", None)]


def test_our_version_missing_from_the_listing_is_an_error():
    class Lagging(Server):
        def call(self, operation, **kwargs):
            if operation == "list_object_versions":
                return {"Versions": [], "DeleteMarkers": []}
            return super().call(operation, **kwargs)

    with pytest.raises(repo_base.RepositoryError, match="run again"):
        repository(Lagging()).create("wal/x", b"1")
