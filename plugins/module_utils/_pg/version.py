# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PostgreSQL major version and bin dir the engine and the modules default to when a caller names none. The
roles always pass the bin dir their ``dr_pg_version`` selects (``backup_pg_bin_dir``, ``restore_pg_bin_dir``,
``wal_archive_pg_bin_dir``).

A module of its own, importing nothing: the WAL command (``immersiverse-dr-wal``, run per segment by
archive_command) reads it without importing psycopg2.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

DEFAULT_PG_MAJOR = 15
DEFAULT_PG_BIN = "/usr/lib/postgresql/%d/bin" % DEFAULT_PG_MAJOR
