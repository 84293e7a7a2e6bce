"""S3 repositories of one process share one boto3 session (the S3 model is loaded once), yet each keeps its own
credentials, endpoint and region; a forked process makes a session of its own."""

import base64
import hashlib
import os
import signal
import threading

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import s3 as repo_s3

pytest.importorskip("boto3")


def s3(n, **kwargs):
    args = dict(bucket=f"bucket-{n}", endpoint_url=f"http://127.0.0.1:{9000 + n}", region=f"eu-west-{n}",
                access_key=f"AKIA{n}", secret_key=f"secret-{n}")
    args.update(kwargs)
    return repo_s3.S3Repository(**args)


def creds(repo):
    return repo.client._request_signer._credentials  # pylint: disable=protected-access


def test_repositories_share_the_session_but_never_credentials_endpoint_or_region():
    one, two = s3(1), s3(2, session_token="token-2")
    session = repo_s3._SESSION["session"]  # pylint: disable=protected-access
    assert session is not None
    three = s3(3)
    assert repo_s3._SESSION["session"] is session  # pylint: disable=protected-access
    assert (creds(one).access_key, creds(one).secret_key, creds(one).token) == ("AKIA1", "secret-1", None)
    assert (creds(two).access_key, creds(two).secret_key, creds(two).token) == ("AKIA2", "secret-2", "token-2")
    assert creds(three).access_key == "AKIA3"
    assert [r.client.meta.endpoint_url for r in (one, two, three)] == [
        "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"]
    assert [r.client.meta.region_name for r in (one, two, three)] == ["eu-west-1", "eu-west-2", "eu-west-3"]


def test_a_forked_process_makes_a_session_of_its_own(monkeypatch):
    s3(1)
    before = repo_s3._SESSION["session"]  # pylint: disable=protected-access
    monkeypatch.setattr(os, "getpid", lambda: -1)
    s3(2)
    assert repo_s3._SESSION["session"] is not before  # pylint: disable=protected-access


def test_threads_making_repositories_at_once_each_get_their_own_client():
    made, errors = {}, []

    def make(n):
        try:
            made[n] = s3(n)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(creds(r).access_key for r in made.values()) == [f"AKIA{n}" for n in range(1, 9)]


def test_a_repository_without_keys_gets_the_default_chain_not_another_repositorys_keys(monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: -2)  # a session made after the environment below
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROM-THE-ENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    with_keys = s3(1)
    without = s3(2, access_key=None, secret_key=None)
    assert creds(with_keys).access_key == "AKIA1"
    assert (creds(without).access_key, creds(without).secret_key) == ("FROM-THE-ENVIRONMENT", "env-secret")


def test_a_child_forked_while_the_session_lock_is_held_still_makes_repositories():
    s3(1)
    with repo_s3._SESSION_LOCK:  # pylint: disable=protected-access  # held, as by another thread, at the fork
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's side
            signal.alarm(20)  # a deadlock ends the child, and the test fails on its status
            try:
                ok = creds(s3(5)).access_key == "AKIA5" and repo_s3._SESSION["pid"] == os.getpid()  # pylint: disable=protected-access
            except BaseException:  # pylint: disable=broad-except
                ok = False
            os._exit(0 if ok else 1)
    status = os.waitpid(child, 0)[1]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


class _Sent(Exception):
    pass


def _put_headers(repo, send=None):
    """The headers of the PutObject request ``send(repo)`` makes (by default a plain client PUT of 100 bytes), caught
    before it leaves."""
    seen = {}

    def catch(request, **_kwargs):
        seen.update(request.headers)
        raise _Sent()

    repo.client.meta.events.register_first("before-send.s3.PutObject", catch)
    with pytest.raises(_Sent):
        if send is None:
            repo.client.put_object(Bucket=repo.bucket, Key="k", Body=b"x" * 100, Metadata={"sha256": "0"})
        else:
            send(repo)
    return {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in seen.items()}


def test_an_s3_compatible_server_gets_plain_puts_over_https():
    """botocore 1.36+ sends PutObject over HTTPS as aws-chunked with a trailing checksum by default, which Ceph RGW
    16.2 (the lab's) refuses with MissingContentLength: against an endpoint_url the repository sends a plain body
    with its Content-Length; AWS itself keeps botocore's default."""
    headers = _put_headers(s3(1, endpoint_url="https://127.0.0.1:9443"))
    assert "aws-chunked" not in headers.get("content-encoding", ""), headers
    assert headers.get("content-length") == "100", headers
    assert "x-amz-trailer" not in headers, headers
    seen = _put_headers(s3(3, endpoint_url="https://127.0.0.1:9443"),
                        lambda repo: repo.put_bytes("k", b"x" * 100, overwrite=True))
    # what S3 demands on an Object Lock bucket, and what a body that changed on the way fails against
    assert seen.get("content-md5") == base64.b64encode(hashlib.md5(b"x" * 100).digest()).decode(), seen
    aws = s3(2, endpoint_url=None, region="eu-west-1")
    assert getattr(aws.client.meta.config, "request_checksum_calculation", None) != "when_required"
