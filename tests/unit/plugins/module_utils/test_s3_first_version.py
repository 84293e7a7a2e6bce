"""S3Repository.create on a versioned bucket whose server ignores If-None-Match (Ceph RGW 16.2): the first version
since the key was last deleted wins, a later writer takes its own version back; whatever cannot be ordered is an
error, with the writer's version taken back. The lab test (tests/lab/test_s3_server_lab.py) races real writers
against RGW; these pin down the rules."""

import datetime

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import s3 as repo_s3

T0 = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


class Client:
    """What create() calls on the boto3 client directly: the take-back delete and the lock check."""

    def __init__(self, server):
        self.server = server

    def delete_object(self, **kwargs):
        self.server.calls.append(("take_back", kwargs["VersionId"]))

    def head_object(self, **kwargs):
        if self.server.locked:
            return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": at(10 ** 7)}
        return {}


class Server:
    """Answers the calls create() makes: every PUT adds a version (the header ignored), as RGW does."""

    def __init__(self, versions=(), markers=(), delete_refused=False, locked=False, listing_denied=False,
                 truncated=False):
        self.versions = list(versions)  # (version id, time), newest first
        self.markers = list(markers)
        self.delete_refused = delete_refused
        self.locked = locked
        self.listing_denied = listing_denied
        self.truncated = truncated
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
            resp = {"Versions": [{"Key": kwargs["Prefix"], "VersionId": v, "LastModified": t}
                                 for v, t in self.versions],
                    "DeleteMarkers": [{"Key": kwargs["Prefix"], "VersionId": "dm", "LastModified": t}
                                      for t in self.markers]}
            if self.truncated:
                resp.update(IsTruncated=True, NextKeyMarker=kwargs["Prefix"])
            return resp
        if operation == "delete_object":
            if self.delete_refused:
                raise repo_base.RepositoryError("delete_object failed: AccessDenied: object lock")
            return {}
        if operation == "copy_object":
            return {}
        raise AssertionError(operation)


def repository(server, create_check="versions"):
    repo = repo_s3.S3Repository.__new__(repo_s3.S3Repository)
    repo.bucket, repo.prefix, repo.endpoint_url, repo.put_args = "b", "auth-db", None, {}
    repo.create_check = create_check
    repo.call = server.call
    repo.client = Client(server)
    return repo


def test_the_only_version_is_a_create():
    server = Server()
    assert repository(server).create("wal/x", b"1") is True
    assert ("delete_object", "mine") not in server.calls and ("take_back", "mine") not in server.calls


def test_an_older_version_wins_and_ours_is_taken_back():
    server = Server(versions=[("theirs", at(50))])
    assert repository(server).create("wal/x", b"1") is False
    assert ("delete_object", "mine") in server.calls


def test_a_version_deleted_before_ours_does_not_count():
    # a released runbook lock: its generation was deleted (a delete marker), then created again by us
    server = Server(versions=[("released", at(10))], markers=[at(20)])
    assert repository(server).create("locks/failover/1.json", b"1") is True


def test_among_versions_the_servers_order_decides_not_their_times():
    # RGW lists the first-written version last even when its LastModified is the later one
    server = Server(versions=[("theirs", at(200))])
    assert repository(server).create("wal/x", b"1") is False


def test_a_version_after_the_last_delete_still_wins():
    server = Server(versions=[("theirs", at(30)), ("released", at(10))], markers=[at(20)])
    assert repository(server).create("locks/failover/1.json", b"1") is False


@pytest.mark.parametrize("versions, markers", [
    ([("theirs", at(20)), ("released", at(10))], [at(20)]),  # a write at the moment of the last delete
    ([("released", at(10))], [at(100)]),  # a delete at the moment of our write
])
def test_what_cannot_be_ordered_is_an_error_and_ours_is_taken_back(versions, markers):
    server = Server(versions=versions, markers=markers)
    with pytest.raises(repo_base.RepositoryError, match="cannot be ordered"):
        repository(server).create("locks/failover/1.json", b"1")
    assert ("take_back", "mine") in server.calls


def test_object_lock_keeps_ours_so_the_winner_is_copied_over_it():
    server = Server(versions=[("second", at(60)), ("first", at(50))], delete_refused=True, locked=True)
    assert repository(server).create("wal/x", b"1") is False
    assert ("copy_object", "first") in server.calls


def test_a_delete_refused_for_another_reason_is_an_error_not_a_copy():
    server = Server(versions=[("first", at(50))], delete_refused=True, locked=False)
    with pytest.raises(repo_base.RepositoryError, match="could not be taken back"):
        repository(server).create("wal/x", b"1")
    assert not [c for c in server.calls if c[0] == "copy_object"]


def test_without_list_versions_permission_it_fails_closed_naming_the_permission():
    server = Server(versions=[("theirs", at(50))], listing_denied=True)
    with pytest.raises(repo_base.RepositoryError, match="s3:ListBucketVersions"):
        repository(server).create("wal/x", b"1")
    assert ("take_back", "mine") in server.calls


def test_create_check_header_trusts_the_server():
    server = Server(versions=[("theirs", at(50))])
    assert repository(server, create_check="header").create("wal/x", b"1") is True
    assert not [c for c in server.calls if c[0] == "list_object_versions"]


def test_a_truncated_listing_of_the_key_is_an_error():
    with pytest.raises(repo_base.RepositoryError, match="more than 1000 versions"):
        repository(Server(truncated=True)).create("wal/x", b"1")


def test_our_version_missing_from_the_listing_is_an_error():
    class Lagging(Server):
        def call(self, operation, **kwargs):
            if operation == "list_object_versions":
                return {"Versions": [], "DeleteMarkers": []}
            return super().call(operation, **kwargs)

    with pytest.raises(repo_base.RepositoryError, match="run again"):
        repository(Lagging()).create("wal/x", b"1")
