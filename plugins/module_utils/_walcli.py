# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""immersiverse-dr-wal: PostgreSQL's archive_command and restore_command on the database host.

    archive_command = '/usr/local/bin/immersiverse-dr-wal push %p'
    restore_command = '/usr/local/bin/immersiverse-dr-wal fetch %f %p'
    immersiverse-dr-wal stream [--ensure | --stop | --status]     the streamer (on a host in another region)

The installed wrapper answers from the spool without starting Python when the background pusher has already
stored a segment, or the prefetcher has already fetched one; otherwise it runs this module. Configuration:
/etc/immersiverse-dr/wal.json (mode 0600, owner postgres), or --config.

Exit codes: 0 done; 1 not done (push: PostgreSQL keeps the segment and retries; fetch: the file is not in the
archive, recovery may end normally); 126 fetch found a damaged object or no repository answered: PostgreSQL stops
recovery rather than end it early at the wrong point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _walarchive as wa
from ansible_collections.immersiverse.dr.plugins.module_utils import _walstream as ws

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
    p_fetch.add_argument("--partial", action="store_true", default=None,
                         help="when the segment is neither archived nor streamed whole, serve what the streamer "
                              "stored of it (its .partial), padded to a segment: recovery ends at its last record")
    p_prefetch = sub.add_parser("prefetch", help="start fetching segments from NAME on into the spool, before "
                                                 "recovery asks (a restore knows where its WAL starts)")
    p_prefetch.add_argument("name")
    p_prefetch.add_argument("--depth", type=int, help="segments kept ahead of recovery (default: the configuration's)")
    p_prefetch.add_argument("--absent-history", action="append", default=[], metavar="NAME",
                            help="a history file the restore's plan found in no repository: answered 'not there' "
                                 "without Python for %d s" % wa.ABSENT_TTL)
    p_stream = sub.add_parser("stream", help="pg_receivewal into the repository (foreground, for a service)")
    mode = p_stream.add_mutually_exclusive_group()
    mode.add_argument("--ensure", action="store_true", help="start it detached unless it runs (for cron)")
    mode.add_argument("--stop", action="store_true", help="stop a detached streamer")
    mode.add_argument("--status", action="store_true", help="print the streamer's status as JSON")
    p_pusher = sub.add_parser("pusher", help="run the background pusher in the foreground")
    p_pusher.add_argument("--pg-wal", required=True)
    sub.add_parser("status", help="the spool: markers, errors, prefetched files")
    for p in (p_push, p_fetch, p_pusher, p_stream, p_prefetch):
        p.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    try:
        config = wa.Config.load(args.config)
    except (wa.WalArchiveError, ValueError, KeyError) as exc:
        sys.stderr.write("immersiverse-dr-wal: %s\n" % exc)
        return wa.EXIT_ABORT if args.command == "fetch" else 1
    if args.command == "push":
        try:
            if config.asynchronous:
                wa.push_async(config, args.path)
            else:
                wa.push_file(config, args.path)
        except (wa.WalArchiveError, repo_mod.RepositoryError, ValueError, OSError) as exc:
            sys.stderr.write("immersiverse-dr-wal push %s: %s\n" % (os.path.basename(args.path), exc))
            return 1
        return 0
    if args.command == "fetch":
        try:
            found = wa.fetch(config, args.name, args.dest, partial=args.partial)
        except (wa.CorruptWal, wa.BadName) as exc:
            sys.stderr.write("immersiverse-dr-wal fetch %s: %s; stopping recovery rather than ending it early\n"
                             % (args.name, exc))
            return wa.EXIT_ABORT
        except (wa.WalArchiveError, repo_mod.RepositoryError, OSError) as exc:
            if (args.unreachable or config.doc.get("fetch_unreachable", "abort")) == "missing":
                return 1
            sys.stderr.write("immersiverse-dr-wal fetch %s: %s; stopping recovery rather than ending it early\n"
                             % (args.name, exc))
            return wa.EXIT_ABORT
        return 0 if found else 1
    if args.command == "prefetch":
        try:
            started = wa.warm(config, args.name, args.depth, args.absent_history)
        except (wa.WalArchiveError, ValueError, OSError) as exc:
            sys.stderr.write("immersiverse-dr-wal prefetch %s: %s\n" % (args.name, exc))
            return 1
        sys.stdout.write("started\n" if started else "running\n")
        return 0
    if args.command == "pusher":
        config.pg_wal = args.pg_wal
        wa.marker_dirs(config)
        wa.run_pusher(config)
        return 0
    if args.command == "stream":
        return stream(config, args)
    if args.command == "status":
        wa.marker_dirs(config)
        doc = {sub_dir: sorted(os.listdir(config.path(sub_dir))) for sub_dir in ("ok", "error", "fetch")}
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    return 2


def stream(config, args):
    try:
        if args.ensure:  # the role reads the answer (changed or not)
            sys.stdout.write("started\n" if ws.ensure(config) else "running\n")
        elif args.stop:
            sys.stdout.write("stopped\n" if ws.stop(config) else "not running\n")
        elif args.status:
            sys.stdout.write(json.dumps(ws.status(config), sort_keys=True) + "\n")
        else:
            ws.Streamer(config).run()
    except (wa.WalArchiveError, repo_mod.RepositoryError, ValueError, OSError) as exc:
        sys.stderr.write("immersiverse-dr-wal stream: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
