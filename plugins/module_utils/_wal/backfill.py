# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Repairing the repositories: the backfill copies a segment a repository is owed from one that holds a good
copy (create-only, content compared); the reconcile compares listings after a failover or a rebuild.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import hashlib
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import status as wal_status


# -- backfill: the owed segments, from the stored objects ---------------------------------------------------------
class _SourceDown(Exception):
    """No repository that answered holds a good copy and one did not answer (it may hold one): try again later."""


def backfill(config, max_seconds=None, honor_backoff=False, log=None):
    """Copy what each repository, the home one as much as an offsite one, is owed from a repository that holds a good
    copy (the home one first, then the others in order), create-only and compared, then remove the markers. The
    stored object is copied, never pg_wal's file (PostgreSQL may have recycled it). A repository that fails stops
    its round (and, with ``honor_backoff``, as the pusher runs it, one in back-off is not tried); a conflict keeps
    that marker and the others go on. ``max_seconds``: no new copy starts after that. Returns ``{"copied": [(id,
    name, how)], "owed": {id: count}, "errors": {id: message}}``."""
    repos = config.repositories()
    ids = wal_config.repository_ids(config)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    skipped = wal_status.backing_off(config) if honor_backoff else set()
    down = repo_spec.unavailable_errors()
    report = {"copied": [], "owed": {}, "errors": {}}
    outcomes, conflicts = {}, {}
    for index, target in enumerate(repos):
        rid = ids[index]
        names = wal_status.owed_names(config, rid)
        if not names or rid in skipped:
            continue
        sources = [r for i, r in enumerate(repos) if i != index]
        for name in names:
            if deadline is not None and time.monotonic() > deadline:
                break
            marker = wal_status.read_owed(config, rid, name)
            key = marker.get("key") or wal_naming.wal_key(name)
            try:
                how = _backfill_one(target, sources, key, name, marker.get("sha256"))
            except _SourceDown as exc:
                report["errors"][rid] = str(exc)
                break
            # a conflict, or no copy anywhere: a person must look; the rest goes on
            except wal_objects.WalArchiveError as exc:
                conflicts[rid] = report["errors"][rid] = str(exc)
                continue
            except down as exc:
                outcomes[rid] = report["errors"][rid] = wal_status.why_failed(target, exc)
                break
            _copied(config, report, outcomes, rid, name, how, log, "backfilled")
    if outcomes:
        wal_status.note_outcomes(config, outcomes, force=True)
    if conflicts:
        wal_status.note_outcomes(config, conflicts, force=True, backoff=False)
    for rid in ids:
        count = len(wal_status.owed_names(config, rid))
        if count:
            report["owed"][rid] = count
    return report


def _backfill_one(target, sources, key, name, want):
    """"copied" or "present" (the target held the same content already); WalArchiveError on a conflict."""
    theirs = wal_objects.peek_header(target, key)
    if theirs is not None and (want is None or theirs == want):
        return "present"
    if theirs is not None:
        raise wal_objects.WalArchiveError(
            "%s holds %s with different content (sha256 %s, the archived one %s): not copied, it stays owed. Two "
            "clusters may be archiving into one repository, or a timeline was reused; find out before touching "
            "either" % (target.describe(), name, theirs, want))
    blob, digest = _stored_copy(sources, key, name, want)
    if target.create(key, blob):
        return "copied"
    theirs = wal_objects.peek_header(target, key)
    if theirs != digest:
        raise wal_objects.WalArchiveError(
            "%s: another writer stored %s a moment ago with different content (sha256 %s, the archived one %s): "
            "it was kept, it stays owed; find out why before touching either" % (target.describe(), name, theirs,
                                                                                 digest))
    return "present"


def _stored_copy(sources, key, name, want):
    """A verified stored object of ``key`` (the bytes and its content sha256) from the first source that has one."""
    problems = []
    any_down = False
    down = repo_spec.unavailable_errors()
    for src in sources:
        try:
            found = src.read(key)
        except down as exc:
            any_down = True
            problems.append(wal_status.why_failed(src, exc))
            continue
        if found is None:
            problems.append("%s has no %s" % (src.describe(), key))
            continue
        blob, info = found
        try:
            stored = info.get("sha256")
            if stored and hashlib.sha256(blob).hexdigest() != stored:
                raise wal_objects.CorruptWal("%s: %s does not match its stored checksum" % (src.describe(), key))
            wal_objects.unpack(blob, "%s in %s" % (key, src.describe()))
            digest = wal_objects.parse_header(blob)[0]
        except wal_objects.CorruptWal as exc:
            problems.append(str(exc))
            continue
        if want and digest != want:
            problems.append("%s holds %s with other content (sha256 %s) than was archived (%s)"
                            % (src.describe(), key, digest, want))
            continue
        return blob, digest
    if any_down:
        raise _SourceDown("no repository that answered holds a good copy of %s and one did not answer (%s): it is "
                          "copied once that one answers" % (name, "; ".join(problems)))
    raise wal_objects.WalArchiveError(
        "no repository holds a good copy of %s to backfill from (%s): it cannot be copied. If it "
        "was expired, remove its owed marker and take a new full backup"
        % (name, "; ".join(problems)))


def reconcile(config, everything=False, max_seconds=None, log=None):
    """What the owed markers cannot cover (they live on one primary's spool: a failover, a rebuild, async off with
    no pusher): list ``wal/`` in every repository and copy every WAL file some repository holds and another lacks,
    as the backfill copies (verified, create-only, never over different content). A repository gets only what is
    not older than the oldest segment it holds itself, so what its lifecycle expired, or what it never had before
    it joined, does not come back (timeline history files always; a repository holding no segment gets none);
    ``everything``: from the oldest any repository holds. A name the other repositories hold with different content
    is a conflict: reported, not copied. One listing per repository; ``max_seconds``: no copy starts after that.
    Returns ``{"copied": [(id, name, how)], "missing": {id: count not copied}, "older": {id: (count, the oldest
    segment it holds)}, "conflicts": [message], "errors": {id: message}}``."""
    repos = config.repositories()
    ids = wal_config.repository_ids(config)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    down = repo_spec.unavailable_errors()
    report = {"copied": [], "missing": {}, "older": {}, "conflicts": [], "errors": {}}
    held = {}  # position -> the WAL file names it holds
    for index, repo in enumerate(repos):
        try:
            keys = [o["key"] for o in repo.list("wal/")]
        except down as exc:
            report["errors"][ids[index]] = "cannot list its WAL: %s" % wal_status.why_failed(repo, exc)
            continue
        held[index] = {k.rsplit("/", 1)[-1] for k in keys if wal_naming.wal_key(k.rsplit("/", 1)[-1]) == k
                       and wal_naming.is_wal_file_name(k.rsplit("/", 1)[-1])}
    outcomes = {}
    for index in sorted(held):
        rid, target = ids[index], repos[index]
        mine = held[index]
        floor = min((n for n in mine if wal_naming.SEGMENT_RE.match(n)), default=None)

        def older(name, floor=floor):
            return not everything and not wal_naming.HISTORY_RE.match(name) and (floor is None or name[:24] < floor)

        others = set().union(*(held[i] for i in held if i != index)) if len(held) > 1 else set()
        wanted = sorted(others - mine)
        skipped = [n for n in wanted if older(n)]
        if skipped:
            report["older"][rid] = (len(skipped), floor)
        todo = [n for n in wanted if not older(n)]
        left = 0
        for position, name in enumerate(todo):
            if deadline is not None and time.monotonic() > deadline:
                left += len(todo) - position
                break
            key = wal_naming.wal_key(name)
            holders = [repos[i] for i in sorted(held) if i != index and name in held[i]]
            try:
                how = _backfill_one(target, holders, key, name, _agreed(holders, key, name))
            except _SourceDown as exc:
                report["errors"][rid] = str(exc)
                left += 1
                continue
            # a conflict, or no good copy: a person must look; the rest goes on
            except wal_objects.WalArchiveError as exc:
                report["conflicts"].append(str(exc))
                left += 1
                continue
            except down as exc:
                outcomes[rid] = report["errors"][rid] = wal_status.why_failed(target, exc)
                left += len(todo) - position
                break
            _copied(config, report, outcomes, rid, name, how, log, "reconciled")
        if left:
            report["missing"][rid] = left
    if outcomes:
        wal_status.note_outcomes(config, outcomes, force=True)
    return report


def _copied(config, report, outcomes, rid, name, how, log, verb):
    """A segment repository ``rid`` was owed is there now: the owed marker goes, the report and the outcome say so."""
    wal_config.remove_file(config.path("owed", rid, name))
    report["copied"].append((rid, name, how))
    outcomes.setdefault(rid, None)
    if log:
        log("%s %s to %s (%s)" % (verb, name, rid, how))


def _agreed(holders, key, name):
    """The content sha256 every repository holding ``key`` has in its header (None when none could be read); a
    WalArchiveError when two hold different content."""
    seen = {}
    for repo in holders:
        try:
            digest = wal_objects.peek_header(repo, key)
        except repo_spec.unavailable_errors():
            continue  # the copy itself reads the others
        if digest not in (None, "unreadable-header"):
            seen.setdefault(digest, []).append(repo.describe())
    if len(seen) > 1:
        raise wal_objects.WalArchiveError(
            "the repositories hold %s with different content (%s): not copied anywhere. Two clusters may be "
            "archiving into one repository, or a timeline was reused; find out before touching either"
            % (name, "; ".join("%s: sha256 %s" % (", ".join(where), d) for d, where in sorted(seen.items()))))
    return next(iter(seen), None)
