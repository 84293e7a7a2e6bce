# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""immersiverse-dr-wal: PostgreSQL's archive_command and restore_command on the database host.

    archive_command = '/usr/local/bin/immersiverse-dr-wal push %p'
    restore_command = '/usr/local/bin/immersiverse-dr-wal fetch %f %p --unreachable missing'
    immersiverse-dr-wal stream [--ensure | --stop | --status]     the streamer (on a host in another region)
    immersiverse-dr-wal backfill [--max-seconds N]     copy what repositories are owed (0: nothing owed)
    immersiverse-dr-wal backfill --reconcile [--all]   and what one repository holds and another lacks (listings)
    immersiverse-dr-wal status [--clear-gaps]          the spool, status.json and gaps.jsonl (owed, gaps), as JSON

The installed wrapper answers from the spool without starting Python when the background pusher has already
stored a segment, or the prefetcher has already fetched one; otherwise it runs this module. Configuration:
/etc/immersiverse-dr/wal.json (mode 0600, owner postgres), or --config.

Exit codes: 0 done; 1 not done (push: PostgreSQL keeps the segment and retries; fetch: the file is not in the
archive, recovery may end normally; backfill: something is still owed or missing); 126 fetch found a damaged object,
no repository answered or the configuration cannot be read: PostgreSQL stops recovery rather than end it early at
the wrong point. Under ``--unreachable missing`` (a streaming standby) a fetch gives up on a repository after one
short attempt (fetch_missing_timeout, fetch_missing_attempts) and answers 1, so the standby goes back to streaming;
an unreadable configuration is 1 there too (a damaged object or a bad name stays 126).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import backfill as wal_backfill
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import fetch as wal_fetch
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import pusher as wal_pusher
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import status as wal_status
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import stream as wal_stream

DEFAULT_CONFIG = "/etc/immersiverse-dr/wal.json"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="immersiverse-dr-wal")
    sub = parser.add_subparsers(dest="command", required=True)
    p_push = sub.add_parser("push", help="archive one WAL file (archive_command ... %%p)")
    p_push.add_argument("path")
    p_fetch = sub.add_parser("fetch", help="restore one WAL file (restore_command ... %%f %%p)")
    p_fetch.add_argument("name")
    p_fetch.add_argument("dest")
    p_fetch.add_argument("--unreachable", choices=["abort", "missing"],
                         help="when no repository answers: stop recovery (abort), or report the file missing "
                              "(a streaming standby carries on); default from the configuration")
    p_fetch.add_argument("--not-found-exit", type=int, default=1, metavar="N",
                         help="the exit status for 'not archived' (the installed wrapper passes 3 and turns it "
                              "into 1, so that a crash, which Python reports as 1, never reads as 'not there')")
    p_fetch.add_argument("--partial", action="store_true", default=None,
                         help="when the segment is neither archived nor streamed whole, serve what the streamer "
                              "stored of it (its .partial), padded to a segment: recovery ends at its last record")
    p_prefetch = sub.add_parser("prefetch", help="start fetching segments from NAME on into the spool, before "
                                                 "recovery asks (a restore knows where its WAL starts)")
    p_prefetch.add_argument("name")
    p_prefetch.add_argument("--depth", type=int, help="segments kept ahead of recovery (default: the configuration's)")
    p_prefetch.add_argument("--absent-history", action="append", default=[], metavar="NAME",
                            help="a history file the restore's plan found in no repository: answered 'not there' "
                                 "without Python for %d s" % wal_fetch.ABSENT_TTL)
    p_stream = sub.add_parser("stream", help="pg_receivewal into the repository (foreground, for a service)")
    mode = p_stream.add_mutually_exclusive_group()
    mode.add_argument("--ensure", action="store_true", help="start it detached unless it runs (for cron)")
    mode.add_argument("--stop", action="store_true", help="stop a detached streamer")
    mode.add_argument("--status", action="store_true", help="print the streamer's status as JSON")
    p_pusher = sub.add_parser("pusher", help="run the background pusher in the foreground")
    p_pusher.add_argument("--pg-wal", required=True)
    p_status = sub.add_parser("status", help="the spool (markers, errors, prefetched files), status.json and "
                                             "gaps.jsonl: per repository what is owed and the last error, gaps in "
                                             "the archive")
    p_status.add_argument("--clear-gaps", action="store_true",
                          help="move the recorded gaps aside to a timestamped file in the spool (after a new full "
                               "backup made them irrelevant)")
    p_backfill = sub.add_parser("backfill", help="copy the segments repositories are owed from a repository that "
                                                 "holds them; exit 0 when nothing is owed any more")
    p_backfill.add_argument("--max-seconds", type=float, help="start no copy after this many seconds")
    p_backfill.add_argument("--reconcile", action="store_true",
                            help="then list wal/ in every repository and copy what one holds and another lacks "
                                 "(after a failover or a rebuild: the owed markers are on the old primary)")
    p_backfill.add_argument("--all", action="store_true", dest="everything",
                            help="with --reconcile: also what is older than the oldest segment a repository holds "
                                 "(a new region; by default what a lifecycle rule expired is not brought back)")
    for p in (p_push, p_fetch, p_pusher, p_stream, p_prefetch, p_status, p_backfill):
        p.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    try:
        config = wal_config.Config.load(args.config)
    except (wal_objects.WalArchiveError, ValueError, KeyError) as exc:
        sys.stderr.write("immersiverse-dr-wal: %s\n" % exc)
        if args.command == "fetch" and args.unreachable != "missing":
            return wal_config.EXIT_ABORT  # a restore must not end early on it
        return 1  # push: PostgreSQL retries; a streaming standby streams on
    if args.command == "push":
        try:
            wal_pusher.archive(config, args.path)
        except (wal_objects.WalArchiveError, repo_base.RepositoryError, ValueError, OSError) as exc:
            sys.stderr.write("immersiverse-dr-wal push %s: %s\n" % (os.path.basename(args.path), exc))
            return 1
        return 0
    if args.command == "fetch":
        return fetch(config, args)
    if args.command == "prefetch":
        try:
            started = wal_fetch.warm(config, args.name, args.depth, args.absent_history)
        except (wal_objects.WalArchiveError, ValueError, OSError) as exc:
            sys.stderr.write("immersiverse-dr-wal prefetch %s: %s\n" % (args.name, exc))
            return 1
        sys.stdout.write("started\n" if started else "running\n")
        return 0
    if args.command == "pusher":
        config.pg_wal = args.pg_wal
        wal_pusher.marker_dirs(config)
        wal_pusher.run_pusher(config)
        return 0
    if args.command == "stream":
        return stream(config, args)
    if args.command == "status":
        return status(config, args)
    if args.command == "backfill":
        return backfill(config, args)
    return 2


def fetch(config, args):
    missing = (args.unreachable or config.fetch_unreachable) == "missing"
    if missing:  # a streaming standby: a repository that does not answer at once is "not archived (yet)"
        config.fail_fast()
    try:
        found = wal_fetch.fetch(config, args.name, args.dest, partial=args.partial)
    except (wal_objects.CorruptWal, wal_objects.BadName) as exc:
        sys.stderr.write("immersiverse-dr-wal fetch %s: %s; stopping recovery rather than ending it early\n"
                         % (args.name, exc))
        return wal_config.EXIT_ABORT
    except repo_spec.unavailable_errors(wal_objects.WalArchiveError) as exc:
        if missing:
            sys.stderr.write("immersiverse-dr-wal fetch %s: %s; answered 'not archived' (--unreachable missing): "
                             "a standby carries on streaming and asks again later\n" % (args.name, exc))
            return args.not_found_exit
        sys.stderr.write("immersiverse-dr-wal fetch %s: %s; stopping recovery rather than ending it early\n"
                         % (args.name, exc))
        return wal_config.EXIT_ABORT
    return 0 if found else args.not_found_exit


def status(config, args):
    """The spool's markers, status.json and the gaps recorded in gaps.jsonl, the owed counts recounted from the
    markers now (nothing is written unless --clear-gaps)."""
    try:
        wal_pusher.marker_dirs(config)
        cleared = wal_status.clear_gaps(config) if args.clear_gaps else None
        doc = {sub_dir: sorted(os.listdir(config.path(sub_dir))) for sub_dir in ("ok", "error", "fetch")}
        gaps, unreadable = wal_status.read_gaps(config)
    except OSError as exc:
        sys.stderr.write("immersiverse-dr-wal status: the spool %s is unusable (%s): run this as the user "
                         "PostgreSQL runs as (sudo -u postgres)\n" % (config.spool, exc))
        return 1
    try:
        current = wal_status._load_status(config)
    except (wal_objects.WalArchiveError, OSError) as exc:
        current = {"status_unreadable": str(exc)}
    wal_status.recount(config, current)
    current.update(gaps=gaps, gap=gaps[-1] if gaps else None, gaps_file=wal_status.gaps_path(config))
    if unreadable:
        current["gaps_unreadable_lines"] = unreadable
    doc.update(current)
    if cleared is not None:
        doc["gaps_cleared"], doc["gaps_moved_to"] = cleared
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    return 0


def backfill(config, args):
    try:
        wal_pusher.marker_dirs(config)
        report = wal_backfill.backfill(config, max_seconds=args.max_seconds)
        found = wal_backfill.reconcile(config, args.everything,
                                       max_seconds=args.max_seconds) if args.reconcile else None
    except (wal_objects.WalArchiveError, repo_base.RepositoryError, ValueError, OSError) as exc:
        sys.stderr.write("immersiverse-dr-wal backfill: %s\n" % exc)
        return 1
    for rid, name, how in report["copied"] + (found["copied"] if found else []):
        sys.stdout.write("copied %s to %s\n" % (name, rid) if how == "copied"
                         else "%s was in %s already\n" % (name, rid))
    for rid, count in sorted(report["owed"].items()):
        names = wal_status.owed_names(config, rid)
        why = report["errors"].get(rid)
        sys.stdout.write("still owed to %s: %d segment(s), oldest %s%s\n"
                         % (rid, count, names[0] if names else "?", ": %s" % why if why else ""))
    done = not report["owed"]
    if found is not None:
        done = done and not (found["missing"] or found["conflicts"] or found["errors"])
        for rid, (count, oldest) in sorted(found["older"].items()):
            sys.stdout.write("not copied to %s: %d file(s) older than the oldest segment it holds (%s); --all "
                             "copies them too\n" % (rid, count, oldest or "none"))
        for message in found["conflicts"]:
            sys.stdout.write("conflict: %s\n" % message)
        for rid, count in sorted(found["missing"].items()):
            why = found["errors"].get(rid)
            sys.stdout.write("still missing in %s: %d file(s)%s; run the backfill --reconcile again\n"
                             % (rid, count, ": %s" % why if why else ""))
        for rid, why in sorted(found["errors"].items()):
            if rid not in found["missing"]:
                sys.stdout.write("not reconciled: %s: %s\n" % (rid, why))
    if done:
        sys.stdout.write("nothing owed\n" if found is None else "nothing owed, nothing missing\n")
        return 0
    return 1


def stream(config, args):
    try:
        if args.ensure:  # the role reads the answer (changed or not)
            sys.stdout.write("started\n" if wal_stream.ensure(config) else "running\n")
        elif args.stop:
            sys.stdout.write("stopped\n" if wal_stream.stop(config) else "not running\n")
        elif args.status:
            sys.stdout.write(json.dumps(wal_stream.status(config), sort_keys=True) + "\n")
        else:
            wal_stream.Streamer(config).run()
    except (wal_objects.WalArchiveError, repo_base.RepositoryError, ValueError, OSError) as exc:
        sys.stderr.write("immersiverse-dr-wal stream: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
