# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook lock: one failover, switchover, restore or PITR at a time, whichever controller runs it (two AWX
nodes, a laptop and AWX).

The lock is an object ``locks/<name>.json`` created create-only (S3 ``If-None-Match: *``, local ``link(2)``) in the
regions' repositories, and held when a majority of them took it: a region that is down (the disaster being
handled) does not block the runbook, and two controllers can never both hold a majority. A run that gets no
majority takes back the copies it made and is told who holds the lock, since when, from where.

A holder is a run (``run_id``) of a process on a controller (host, pid and the pid's start time). Its own lock is
taken again without a fuss (a re-run inside one playbook); a holder on this very controller whose process is gone
(killed, crashed) is taken over at once, so a killed run can be run again and resume; a holder elsewhere is refused
until its lock is past its TTL and the operator says ``break_stale``.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class LockHeld(_errors.DrError):
    """Another run holds the lock (or too few repositories answered to take it)."""


def key_for(name):
    if not name or not set(name) <= NAME_CHARS or len(name) > 64:
        raise LockHeld("lock name %r: lower-case letters, digits, - and _ only" % (name,))
    return "locks/%s.json" % name


def process_start(pid):
    """The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat); None when gone."""
    try:
        with open("/proc/%d/stat" % int(pid)) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def me(pid=None):
    """Who this controller process is: host, pid and the pid's start time."""
    pid = int(pid or os.getpid())
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid)}


def _utc(now):
    return (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text):
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None


def holder_gone(doc, here=None):
    """The holder ran on this controller and its process is gone (or is another process with a reused pid)."""
    proc = doc.get("process") or {}
    here = here or socket.gethostname()
    if proc.get("host") != here or not proc.get("pid"):
        return False
    return process_start(proc["pid"]) != proc.get("pid_start")


def describe(doc):
    proc = doc.get("process") or {}
    return "%s (run %s, pid %s on %s) since %s, until %s" % (
        doc.get("holder") or "someone", doc.get("run_id"), proc.get("pid"), proc.get("host"), doc.get("since"),
        doc.get("expires"))


def _read(repo, key):
    raw = repo.read_start(key, 65536)
    if raw is None:
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"holder": "an unreadable lock object", "run_id": None}
    return doc if isinstance(doc, dict) else {"holder": "an unreadable lock object", "run_id": None}


def acquire(repositories, name, run_id, holder, ttl_seconds=7200, break_stale=False, process=None, now=None):
    """Take the lock in a majority of ``repositories``. Returns {'acquired': True, 'lock', 'repositories',
    'took_over'}; raises LockHeld naming the holder (nothing of this run is left behind then)."""
    key = key_for(name)
    if not repositories:
        raise LockHeld("no repository to keep the runbook lock in")
    now = _utc(now)
    doc = {"name": name, "run_id": run_id, "holder": holder, "process": process or me(),
           "since": _iso(now), "expires": _iso(now + datetime.timedelta(seconds=int(ttl_seconds))),
           "ttl_seconds": int(ttl_seconds)}
    body = json.dumps(doc, sort_keys=True).encode()
    need = len(repositories) // 2 + 1
    got, held, errors, took_over = [], [], [], []
    # one order for every run (by name), and a stop at the first repository another run holds: two runs never
    # split the repositories between them so that neither gets a majority
    for repo in sorted(repositories, key=lambda r: r.name):
        if held:
            break
        try:
            for _attempt in range(2):  # bounded: create, or take over a dead/stale holder once and create again
                if repo.create(key, body):
                    got.append(repo)
                    break
                theirs = _read(repo, key)
                if theirs is None:
                    continue  # released between the two calls: try again
                if theirs.get("run_id") == run_id:
                    got.append(repo)  # this very run, again
                    break
                expires = _parse(theirs.get("expires"))
                stale = expires is not None and expires < now
                if holder_gone(theirs) or (stale and break_stale):
                    repo.delete([key])
                    took_over.append(describe(theirs))
                    continue
                held.append((repo, theirs, stale))
                break
        except repo_mod.unavailable_errors() as exc:
            errors.append(str(exc) if isinstance(exc, repo_mod.RepositoryError) else "%s: %s" % (repo.describe(), exc))
    if len(got) >= need:
        return {"acquired": True, "lock": doc, "repositories": [r.name for r in got], "took_over": took_over}
    for repo in got:  # no majority: take back what this run made
        _release_one(repo, key, run_id)
    if held:
        repo, theirs, stale = held[0]
        hint = ("it is past its TTL: if that run is dead, run again with -e dr_lock_break_stale=true to break it"
                if stale else "wait for it to finish; a dead holder's lock can be broken once past its TTL "
                              "(%s) with -e dr_lock_break_stale=true" % theirs.get("expires"))
        raise LockHeld("the runbook lock is held by %s (in %s): %s. Nothing was changed."
                       % (describe(theirs), repo.describe(), hint))
    raise LockHeld("could take the runbook lock in only %d of %d repositories (a majority, %d, is needed): %s. "
                   "Nothing was changed." % (len(got), len(repositories), need, "; ".join(errors) or "no answer"))


def _release_one(repo, key, run_id):
    try:
        theirs = _read(repo, key)
        if theirs is not None and theirs.get("run_id") == run_id:
            repo.delete([key])
            return True
    except repo_mod.unavailable_errors():
        pass
    return False


def release(repositories, name, run_id):
    """Delete this run's lock objects (never another run's). Returns the names of the repositories released."""
    key = key_for(name)
    return [repo.name for repo in repositories if _release_one(repo, key, run_id)]


def status(repositories, name):
    """The lock as each repository holds it: {repository name: lock document or None, or {'error': ...}}."""
    key = key_for(name)
    out = {}
    for repo in repositories:
        try:
            out[repo.name] = _read(repo, key)
        except repo_mod.unavailable_errors() as exc:
            out[repo.name] = {"error": str(exc)}
    return out
