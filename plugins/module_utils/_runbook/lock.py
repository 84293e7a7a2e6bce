# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook lock: one failover, switchover, restore or PITR at a time, whichever controller runs it (two AWX
nodes, a laptop and AWX).

The lock is a numbered object ``locks/<name>/<generation>.json`` created create-only (S3 ``If-None-Match: *``,
local ``link(2)``) in the regions' repositories, and held when a majority of them took it: a region that is down
(the disaster being handled) does not block the runbook, and two controllers can never both hold a majority. A run
that gets no majority takes back the copies it made and is told who holds the lock, since when, from where.

A holder is a run (``run_id``) of a process on a controller (host, boot id, pid namespace, pid and the pid's start
time). Its own lock is taken again without a fuss (a re-run inside one playbook); a holder on this very controller
whose process is gone (killed, crashed) is taken over at once, so a killed run can be run again and resume; a
holder elsewhere is refused until the operator names it (``break_run_id``: they know that run is dead) or it is
past its TTL and the operator says ``break_stale``. A take-over creates the next generation create-only, so two
runs taking over the same dead holder never both win.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class LockHeld(_errors.DrError):
    """Another run holds the lock (or too few repositories answered to take it)."""


MAX_GENERATIONS = 1000  # lock objects kept under one name: bounded listing and clean-up


def prefix_for(name):
    if not name or not set(name) <= NAME_CHARS or len(name) > 64:
        raise LockHeld("lock name %r: lower-case letters, digits, - and _ only" % (name,))
    return "locks/%s/" % name


def key_for(name, generation=1):
    return "%s%08d.json" % (prefix_for(name), int(generation))


# A release leaves a small record of its time under released/: a run that read the regions while it waited for the
# lock (the failover reads while the lock is taken in the background) learns that another run finished in between,
# and reads again before it plans. Kept: the newest KEEP_RELEASED per repository.
KEEP_RELEASED = 20


def released_prefix(name):
    return prefix_for(name) + "released/"


def _released(repo, name):
    """[(time text, key)] of the release records, oldest first (the key begins with the UTC time)."""
    out = []
    for obj in repo.list(released_prefix(name)):  # all of them: the newest must not fall past a bound
        base = obj["key"].rsplit("/", 1)[-1]
        if base.endswith(".json") and "-" in base:
            out.append((base.split("-", 1)[0], obj["key"]))
    return sorted(out)


def last_released(repositories, name, now=None):
    """The time (ISO, UTC, microseconds) of the newest release record in these repositories (the ones this run
    holds the lock in), or None. A repository that cannot be listed may hold the newest: then it is now, so that the
    caller reads again rather than trust a read that may be stale."""
    newest = None
    for repo in repositories:
        try:
            records = _released(repo, name)
        except repo_spec.unavailable_errors():
            newest = _utc(now)
            continue
        if records:
            moment = _parse_stamp(records[-1][0])
            if moment is not None and (newest is None or moment > newest):
                newest = moment
    return newest.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00") if newest else None


def _stamp(moment):
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def _parse_stamp(text):
    try:
        return datetime.datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def process_start(pid):
    """The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat); None when gone."""
    try:
        with open("/proc/%d/stat" % int(pid)) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _pid_namespace():
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def me(pid=None):
    """Who this controller process is: host, boot and pid namespace (so another machine or container with the same
    host name is never mistaken for this one), pid and the pid's start time."""
    pid = int(pid or os.getpid())
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid_ns": _pid_namespace(), "pid": pid,
            "pid_start": process_start(pid)}


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
    """The holder ran on this very machine and pid namespace (host name, boot id and namespace all match) and its
    process is gone (or the pid now belongs to another process). Anything else: not known to be gone."""
    proc = doc.get("process") or {}
    here = here or me()
    if not proc.get("pid") or not here.get("boot_id") or here.get("pid_ns") is None:
        return False
    if (proc.get("host"), proc.get("boot_id"), proc.get("pid_ns")) != (here["host"], here["boot_id"], here["pid_ns"]):
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
        return {"holder": "an unreadable lock object %s" % key, "run_id": "unreadable"}
    return doc if isinstance(doc, dict) else {"holder": "an unreadable lock object %s" % key, "run_id": "unreadable"}


def _generations(repo, name):
    """[(generation, key)] of the lock objects under the name, oldest first."""
    out = []
    for obj in repo.list(prefix_for(name))[:MAX_GENERATIONS]:
        base = obj["key"].rsplit("/", 1)[-1]
        if base.endswith(".json") and base[:-5].isdigit():
            out.append((int(base[:-5]), obj["key"]))
    return sorted(out)


def _current(repo, name):
    """(generation, key, document) of the newest lock object, or (0, None, None) when there is none. An object
    that vanished between the listing and the read (released, or an older generation cleaned up after a take-over)
    means: list again; it is never taken for a free lock."""
    for _attempt in range(8):  # bounded: each retry follows a change another run made
        gens = _generations(repo, name)
        if not gens:
            return 0, None, None
        gen, key = gens[-1]
        doc = _read(repo, key)
        if doc is not None:
            return gen, key, doc
    raise LockHeld("%s: the runbook lock objects keep changing under %s; run again" % (repo.describe(),
                                                                                       prefix_for(name)))


def _verdict(theirs, run_id, now, break_stale, break_run_id, here):
    """What this run may do about the current holder: 'mine', 'take' (dead, stale and told, or named), 'held'."""
    if theirs.get("run_id") == run_id:
        return "mine"
    expires = _parse(theirs.get("expires"))
    stale = expires is None or expires < now
    if (break_run_id and theirs.get("run_id") == break_run_id) or holder_gone(theirs, here) or \
            (stale and break_stale):
        return "take"
    return "held"


def acquire(repositories, name, run_id, holder, ttl_seconds=7200, break_stale=False, break_run_id=None,
            quorum=None, process=None, now=None):
    """Take the lock in a quorum (default a majority) of ``repositories``. Returns {'acquired': True, 'lock',
    'repositories', 'took_over'}; raises LockHeld naming the holder (nothing of this run is left behind then).

    Each repository holds numbered lock objects ``locks/<name>/<generation>.json``; the newest is the lock. Taking
    a free lock creates generation 1, taking over a dead or stale one creates the next generation, both create-only:
    of two runs taking over the same dead holder one wins, the other finds the winner holding the lock."""
    prefix_for(name)
    if not repositories:
        raise LockHeld("no repository to keep the runbook lock in")
    now = _utc(now)
    here = process or me()
    doc = {"name": name, "run_id": run_id, "holder": holder, "process": here,
           "since": _iso(now), "expires": _iso(now + datetime.timedelta(seconds=int(ttl_seconds))),
           "ttl_seconds": int(ttl_seconds), "repositories": sorted(r.name for r in repositories)}
    body = json.dumps(doc, sort_keys=True).encode()
    need = int(quorum) if quorum else len(repositories) // 2 + 1
    need = max(1, min(need, len(repositories)))
    got, held, errors, took_over = [], [], [], []
    # one order for every run (by name), and a stop at the first repository another run holds: two runs never
    # split the repositories between them so that neither gets a quorum
    for repo in sorted(repositories, key=lambda r: r.name):
        if held:
            break
        try:
            for _attempt in range(4):  # bounded: a create lost to another writer is looked at again
                gen, key, theirs = _current(repo, name)
                verdict = "free" if theirs is None else _verdict(theirs, run_id, now, break_stale, break_run_id,
                                                                 here)
                if verdict == "mine":
                    got.append(repo)
                    break
                if verdict == "held":
                    held.append((repo, theirs, _parse(theirs.get("expires"))))
                    break
                if repo.create(key_for(name, gen + 1), body):
                    got.append(repo)
                    if verdict == "take":
                        took_over.append(describe(theirs))
                        _delete_older(repo, name, gen + 1)
                    break
        except repo_spec.unavailable_errors() as exc:
            errors.append(str(exc) if isinstance(exc, repo_base.RepositoryError) else "%s: %s" % (repo.describe(), exc))
    if len(got) >= need:
        return {"acquired": True, "lock": doc, "repositories": [r.name for r in got], "took_over": took_over,
                "last_released": last_released(got, name)}
    # no quorum: take back what this run made, wherever it may be (it held nothing, so it leaves no release record)
    release(repositories, name, run_id, record=False)
    if held:
        repo, theirs, expires = held[0]
        stale = expires is None or expires < now
        hint = ("it is past its TTL: if that run is dead, run again with -e dr_lock_break_stale=true"
                if stale else "wait for it to finish. If you know that run is dead (its controller is gone), run "
                              "again with -e dr_lock_break=%s" % theirs.get("run_id"))
        raise LockHeld("the runbook lock is held by %s (in %s): %s. Nothing was changed."
                       % (describe(theirs), repo.describe(), hint))
    raise LockHeld("could take the runbook lock in only %d of %d repositories (%d needed): %s. Nothing was "
                   "changed. With regions down for good, -e dr_lock_quorum=<n> says how many repositories suffice."
                   % (len(got), len(repositories), need, "; ".join(errors) or "no answer"))


def _delete_older(repo, name, generation):
    try:
        repo.delete([key for gen, key in _generations(repo, name) if gen < generation])
    except repo_spec.unavailable_errors():
        pass


def release(repositories, name, run_id, record=True, now=None):
    """Delete this run's lock objects (never another run's), in every repository that answers, and (record) leave a
    release record there with the time. Returns the names of the repositories released."""
    done = []
    stamp = _stamp(_utc(now))
    for repo in repositories:
        try:
            mine = [key for _gen, key in _generations(repo, name) if (_read(repo, key) or {}).get("run_id") == run_id]
            if not mine:
                continue
            if record:
                body = json.dumps({"run_id": run_id, "released_at": stamp}, sort_keys=True).encode()
                repo.create("%s%s-%s.json" % (released_prefix(name), stamp, _safe(run_id)), body)
            repo.delete(mine)
            done.append(repo.name)
            if record:
                old = _released(repo, name)[:-KEEP_RELEASED]
                if old:
                    repo.delete([key for _t, key in old])
        except repo_spec.unavailable_errors():
            pass
    return done


def _safe(run_id):
    """A run id as a key's last part (letters, digits, - and _ only; a path trick becomes _)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(run_id))[:64] or "run"


def status(repositories, name):
    """The lock as each repository holds it: {repository name: newest lock document or None, or {'error': ...}}."""
    out = {}
    for repo in repositories:
        try:
            out[repo.name] = _current(repo, name)[2]
        except repo_spec.unavailable_errors() as exc:
            out[repo.name] = {"error": str(exc)}
    return out


def would_acquire(repositories, name, run_id, ttl_seconds=7200, break_stale=False, break_run_id=None, quorum=None,
                  process=None, now=None):
    """What acquire would do, without writing: {'acquired': bool, 'would_wait_for': [...], 'would_take_over': [...],
    'unreachable': [...]} (check mode)."""
    now = _utc(now)
    here = process or me()
    need = max(1, min(int(quorum) if quorum else len(repositories) // 2 + 1, len(repositories)))
    ok, wait, take, unreachable = 0, [], [], []
    for repo in sorted(repositories, key=lambda r: r.name):
        try:
            theirs = _current(repo, name)[2]
        except repo_spec.unavailable_errors() as exc:
            unreachable.append(str(exc))
            continue
        verdict = "free" if theirs is None else _verdict(theirs, run_id, now, break_stale, break_run_id, here)
        if verdict == "held":
            wait.append(describe(theirs))
            break
        ok += 1
        if verdict == "take":
            take.append(describe(theirs))
    return {"acquired": ok >= need and not wait, "would_wait_for": sorted(set(wait)), "would_take_over": take,
            "unreachable": unreachable, "needed": need}
