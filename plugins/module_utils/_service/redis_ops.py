# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A region's Redis in the runbooks: who is master, who replicates whom, and the auth state cached in it.

The serving region's Redis is the master; the other regions' replicate it (``REPLICAOF``). A failover makes the
target region's Redis the master (``REPLICAOF NO ONE``) and repoints the others at it; a replica is read-only, so
repointing the failed region's Redis also stops writes to it. After a point-in-time recovery the cache may hold
auth state newer than the database (sessions of users the database no longer has): the patterns given are deleted.

Runs where the ``redis`` client library is (the controller). A password comes as a parameter (``no_log``) or in
the URL; neither ever appears in a result or a message. Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors

MAX_SCAN_KEYS = 10000000  # a bound on one flush; far beyond an auth cache's size


class RedisOpsError(_errors.DrError):
    """A Redis step that cannot be done; the message says what to check."""


def where(url):
    """host:port/db of a URL, for messages (never the password)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return "%s:%s%s" % (parts.hostname or "?", parts.port or 6379, parts.path or "")


def connect(url, password=None, timeout=5.0):
    try:
        import redis
    except ImportError:
        raise RedisOpsError("the redis Python library is missing on the controller (pip install redis)") from None
    if not url or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise RedisOpsError("Redis URL must be redis://, rediss:// or unix://, not %r" % where(url or ""))
    kwargs = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if password:
        kwargs["password"] = password
    return redis.Redis.from_url(url, **kwargs)


def _call(url, what, fn):
    try:
        return fn()
    except RedisOpsError:
        raise
    except Exception as exc:  # noqa: BLE001 - every client error becomes one sentence naming the server
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RedisOpsError("Redis %s: %s failed: %s: %s" % (where(url), what, exc.__class__.__name__, text)) from None


def replication(client):
    """The replication state: role, and for a replica its master and link."""
    info = client.info("replication")
    out = {"role": "master" if info.get("role") == "master" else "replica",
           "master_repl_offset": info.get("master_repl_offset"),
           "connected_replicas": int(info.get("connected_slaves", 0) or 0)}
    if out["role"] == "replica":
        out.update({"master_host": info.get("master_host"), "master_port": int(info.get("master_port", 0) or 0),
                    "master_link_status": info.get("master_link_status"),
                    "replica_read_only": bool(int(info.get("slave_read_only", 1) or 0))})
    return out


def ensure_role(url, role, password=None, master_host=None, master_port=6379, timeout=5.0, check_mode=False,
                wait_link_seconds=0.0, poll_seconds=0.5):
    """Make the Redis at ``url`` the master (``role='master'``) or a replica of ``master_host:master_port`` (the
    address as THAT server reaches the master). Idempotent: nothing is sent when it already is. With
    ``wait_link_seconds``, a replica's link to its master must be up within that time (bounded)."""
    if role not in ("master", "replica"):
        raise RedisOpsError("role must be master or replica, not %r" % role)
    if role == "replica" and not master_host:
        raise RedisOpsError("a replica needs master_host (the master's address as this Redis reaches it)")
    client = connect(url, password, timeout)
    try:
        before = _call(url, "INFO replication", lambda: replication(client))
        if role == "master":
            wanted = before["role"] == "master"
        else:
            wanted = (before["role"] == "replica" and before.get("master_host") == master_host
                      and before.get("master_port") == int(master_port))
        changed = not wanted
        if changed and not check_mode:
            if role == "master":
                _call(url, "REPLICAOF NO ONE", lambda: client.execute_command("REPLICAOF", "NO", "ONE"))
            else:
                _call(url, "REPLICAOF %s %s" % (master_host, master_port),
                      lambda: client.execute_command("REPLICAOF", master_host, str(int(master_port))))
        after = before if check_mode else _call(url, "INFO replication", lambda: replication(client))
        if role == "replica" and not check_mode and wait_link_seconds > 0:
            deadline = time.monotonic() + wait_link_seconds
            while after.get("master_link_status") != "up" and time.monotonic() < deadline:
                time.sleep(poll_seconds)
                after = _call(url, "INFO replication", lambda: replication(client))
            if after.get("master_link_status") != "up":
                raise RedisOpsError(
                    "Redis %s replicates %s:%s but its link is %s after %.0f s: can it reach the master (network, "
                    "masterauth)? See that server's log." % (where(url), master_host, master_port,
                                                             after.get("master_link_status"), wait_link_seconds))
        return {"changed": changed, "before": before, "after": after, "server": where(url)}
    finally:
        client.close()


def flush(url, patterns, password=None, timeout=5.0, check_mode=False, batch=500):
    """Delete the keys matching each pattern (SCAN + UNLINK, never KEYS or FLUSHALL). Returns the count per
    pattern; in check mode only counts."""
    if not patterns:
        return {"changed": False, "deleted": {}, "server": where(url)}
    for pattern in patterns:
        if not pattern or pattern.strip("*?") == "":
            raise RedisOpsError("refusing the pattern %r: it matches every key; name the auth keys (session:*, ...)"
                                % pattern)
    client = connect(url, password, timeout)
    counts = {}
    try:
        for pattern in patterns:
            found = 0
            pending = []

            def drop(keys):
                if keys and not check_mode:
                    _call(url, "UNLINK", lambda: client.unlink(*keys))

            matching = _call(url, "SCAN %s" % pattern, lambda p=pattern: list(_scan(client, p, batch)))
            for key in matching:
                found += 1
                pending.append(key)
                if len(pending) >= batch:
                    drop(pending)
                    pending = []
            drop(pending)
            counts[pattern] = found
        return {"changed": any(counts.values()), "deleted": counts, "server": where(url)}
    finally:
        client.close()


def _scan(client, pattern, batch):
    seen = 0
    for key in client.scan_iter(match=pattern, count=batch):
        seen += 1
        if seen > MAX_SCAN_KEYS:
            raise RedisOpsError("more than %d keys match %s: refusing to go on" % (MAX_SCAN_KEYS, pattern))
        yield key


def read_json_values(url, pattern, password=None, timeout=5.0, limit=1000000, batch=500):
    """(values, unreadable): the JSON values of the keys matching ``pattern`` (e.g. revoked:* entries)."""
    import json

    client = connect(url, password, timeout)
    values, unreadable = [], 0
    try:
        keys = _call(url, "SCAN %s" % pattern, lambda: list(_scan(client, pattern, batch)))
        if len(keys) > limit:
            raise RedisOpsError("%d keys match %s on Redis %s, more than the limit %d" % (len(keys), pattern,
                                                                                          where(url), limit))
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            raw = _call(url, "MGET", lambda c=chunk: client.mget(c))
            for key, value in zip(chunk, raw):  # noqa: B905 - MGET answers one value per key
                if value is None:
                    continue  # expired between SCAN and MGET
                try:
                    item = json.loads(value)
                except ValueError:
                    unreadable += 1
                    continue
                if isinstance(item, dict):
                    item.setdefault("_key", key.decode() if isinstance(key, bytes) else key)
                    values.append(item)
                else:
                    unreadable += 1
        return values, unreadable
    finally:
        client.close()
