# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL push: a segment stored in every repository, create-only, content compared. The design of the whole WAL path
(objects.py, pusher.py, status.py, backfill.py, fetch.py) is described here.

Stored object: a one-line header ``IMDRWAL1 <sha256 of the WAL file> <size> <compression>\\n`` and the compressed
file. The header makes every object self-describing and lets a push tell "same name, same content" (success, so
a re-run after a crash is harmless) from "same name, different content" (refused, never overwritten). A fetch
checks the stored bytes' checksum (the repository's), decompresses, checks the header's sha256 and size, and
renames into place.

Asynchronous mode, like pgBackRest's: a background pusher reads ahead of PostgreSQL's archiver (the ``.ready``
files in pg_wal/archive_status), pushes up to ``concurrency`` segments at a time to every repository, and leaves a
marker per segment in the spool; the archive_command then only finds the marker (the installed shell wrapper does
that without starting Python). The spool holds markers, never WAL: segments stay in pg_wal until PostgreSQL
recycles them after a success, so an unreachable repository never loses a segment; the failure is in the spool's
``error`` file, in PostgreSQL's log, and in pg_stat_archiver, and the pusher catches up when the repository returns.
Fetches prefetch the next segments in parallel into the spool, so recovery does not wait on the network.

When a region is down (docs/wal-archiving.md, "When a repository is down"): a segment is archived once at least
one repository stores it (or holds the same content). Every repository that failed (or is in back-off after
failing), this region's (the first, "home") as much as an offsite one, is *owed* the segment: a durable marker
``<spool>/owed/<repository>/<segment>`` is written (fsynced) before the push reports success, and the backfill copies
the stored object later from whichever repository holds a good copy (create-only, content compared) and removes the
marker. A different-content conflict in any repository still refuses the push. The push fails only when no
repository took the segment, every one of them tried by this very push; only then, once the ``.ready`` segments in
pg_wal exceed ``queue_max_bytes``, does the archive_command report success for a segment without storing it, after
the gap is appended (fsynced) to ``<spool>/gaps.jsonl``: a gap that cannot be recorded is not dropped (the push
fails, PostgreSQL keeps the segment). That file is only ever appended to (``status --clear-gaps`` moves it aside to
a timestamped name). ``<spool>/status.json`` holds, per repository, the owed count, the oldest owed segment, the
last error and the last success, and a view of the gaps for monitoring. The markers live on the primary's spool
only: after a failover or a rebuild, ``backfill --reconcile`` (:func:`reconcile`) compares the repositories'
listings and copies what one holds and another lacks.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import os

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import status as wal_status


# -- push ----------------------------------------------------------------------------------------------------------
def push_file(config, path, name=None, key=None, absent_from=()):
    """Store one WAL file. Archived once at least one repository stores it (or holds the same content); every
    repository that fails (or is in back-off after failing), the home one included, is owed it: a durable marker in
    the spool, copied by the backfill. Same content already there: success. Different content in any repository:
    refused, nothing written anywhere. When no repository took it, the ones in back-off are tried too before
    NoRepositoryTookIt (``tried_every``) is raised: that failure always means every repository failed this push.
    The name and the cluster (system identifier) are checked before any repository is asked.
    ``key``: another place than the archive's (the streamer stores under ``stream/``, one repository at a time;
    nothing is owed there: every repository must take it, a failure is raised as it comes). ``absent_from``: names
    of repositories a listing made moments ago showed without this key (the pusher lists a batch's prefix once
    instead of reading every object's header first: on S3 that is one request per segment fewer).
    Returns ``[(repository name, "stored" | "present" | "owed")]``."""
    name = name or os.path.basename(path)
    if not wal_naming.is_wal_file_name(name):
        raise wal_objects.WalArchiveError("%s is not a WAL file name: refusing to archive it" % name)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise wal_objects.WalArchiveError("cannot read %s: %s" % (path, exc)) from None
    wal_objects.check_cluster(config, name, raw, "refusing to archive it")
    blob, digest = wal_objects.pack(raw, config.compression)
    owing = key is None and hasattr(config, "spool")  # the archive's own keys, with a spool to keep the debt in
    key = key or wal_naming.wal_key(name)
    if not owing:
        return _push_everywhere(config.repositories(), name, key, blob, digest, absent_from)
    return _push_owing(config, name, key, blob, digest, absent_from)


def _push_everywhere(repos, name, key, blob, digest, absent_from):
    """Every repository must take it; a repository error is raised as it comes (the streamer's, per repository)."""
    found = [(repo, None if repo.name in absent_from else wal_objects.peek_header(repo, key)) for repo in repos]
    _refuse_conflicts(found, name, digest)
    return [(repo.name, "present" if theirs is not None else _create(repo, key, blob, digest, name))
            for repo, theirs in found]


def _push_owing(config, name, key, blob, digest, absent_from):
    repos = config.repositories()
    ids = wal_config.repository_ids(config)
    skipped = wal_status.backing_off(config) if len(repos) > 1 else set()
    down = repo_spec.unavailable_errors()
    failed = {}  # index -> why that repository is owed this segment
    took = {}  # index -> "stored" | "present"
    tried = []
    # the repositories not in back-off first; the others only when none of those took it, so a failure is never
    # reported before every repository failed this very push
    first = [i for i in range(len(repos)) if ids[i] not in skipped]
    later = [i for i in range(len(repos)) if ids[i] in skipped]
    for batch in (first, later):
        if took or not batch:
            continue
        tried += batch
        # every repository of the batch is checked before any is written: a conflict in one stores nothing anywhere
        # (nothing was written by an earlier batch: it took nothing)
        found = {}
        for index in batch:
            if repos[index].name in absent_from:
                found[index] = None
                continue
            try:
                found[index] = wal_objects.peek_header(repos[index], key)
            except down as exc:
                failed[index] = wal_status.why_failed(repos[index], exc)
        _refuse_conflicts(((repos[i], theirs) for i, theirs in found.items()), name, digest)
        for index, theirs in found.items():
            if theirs is not None:
                took[index] = "present"
                continue
            # create-only: another writer that stored this name since the check above (or inside the listing's
            # window) is never replaced; its copy is compared instead
            try:
                took[index] = _create(repos[index], key, blob, digest, name)
            except down as exc:
                failed[index] = wal_status.why_failed(repos[index], exc)
    if not took:
        reason = "; ".join(failed[i] for i in tried)
        wal_status.note_outcomes(config, {ids[i]: failed[i] for i in tried}, force=True)
        raise wal_objects.NoRepositoryTookIt(
            "no repository could store %s (%s). Not archived: PostgreSQL keeps the segment and retries; fix the "
            "repositories or their network path" % (name, reason), reason=reason, tried_every=True)
    for index in range(len(repos)):
        if index not in took and index not in failed:
            failed[index] = "not tried: in back-off after failing"
    _settle(config, ids, name, key, digest, failed, tried)
    return [(repo.name, took.get(index, "owed")) for index, repo in enumerate(repos)]


def _refuse_conflicts(found, name, digest):
    """``found``: ``(repository, content sha256 in its header or None)``; raise on the first other content."""
    for repo, theirs in found:
        if theirs is not None and theirs != digest:
            raise wal_objects.WalArchiveError(
                "%s already holds %s with different content (sha256 %s, this one %s): refusing to overwrite it. "
                "Two clusters may be archiving into one repository, or a timeline was reused; find out before "
                "touching either" % (repo.describe(), name, theirs, digest))


def _create(repo, key, blob, digest, name):
    """"stored", or "present" when another writer stored the same content first; different content is refused."""
    if repo.create(key, blob):
        return "stored"
    theirs = wal_objects.peek_header(repo, key)
    if theirs != digest:
        raise wal_objects.WalArchiveError(
            "%s: another writer stored %s a moment ago with different content (sha256 %s, this one %s): it "
            "was kept and this one refused. Two clusters may be archiving into one repository, or a timeline "
            "was reused; find out before touching either" % (repo.describe(), name, theirs, digest))
    return "present"


def _settle(config, ids, name, key, digest, failed, tried):
    """After a push that at least one repository took: the debts recorded (durably: success is reported only once
    the markers are on disk), repaid ones removed, the status of the repositories tried noted."""
    changed = False
    for index, rid in enumerate(ids):
        if index in failed:
            try:
                changed = wal_status.owe(config, rid, name, key, digest, failed[index]) or changed
            except OSError as exc:
                raise wal_objects.WalArchiveError(
                    "%s could not be stored in %s and the spool cannot record that it is owed "
                    "(%s): not archived, PostgreSQL keeps it and retries; free the spool %s"
                    % (name, rid, exc, config.spool)) from None
        else:
            changed = wal_config.remove_file(config.path("owed", rid, name)) or changed
    wal_status.note_outcomes(config, {ids[i]: failed.get(i) for i in tried}, force=changed)
