# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The old entry point of immersiverse-dr-backup (``python3 -m ...module_utils._cli``), kept for one release: a host
whose wrapper was written before 0.9.0 keeps running its backup timers after the engine is upgraded and before the
backup role writes the new wrapper (a run of the wal_archive role alone replaces the engine too). Runs _backup.cli.
Remove in 2.0.0.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import cli as backup_cli

main = backup_cli.main

if __name__ == "__main__":
    raise SystemExit(main())
