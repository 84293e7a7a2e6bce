# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One exception family for the engine: every error it raises on purpose is a ``DrError`` whose message says what
happened and what to do next. Modules turn ``ENGINE_ERRORS`` (these, and the OS and value errors of the files,
processes and arguments they touch) into ``fail_json`` with ``message(exc)``: an operator sees a sentence, never a
traceback.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import os
import pwd


class DrError(Exception):
    """Base of the engine's own errors (PgError, BackupError, RepositoryError, RestoreError, ...)."""


ENGINE_ERRORS = (DrError, OSError, ValueError)


def message(exc):
    """The sentence to show for an engine error."""
    if isinstance(exc, DrError):
        return str(exc)
    if isinstance(exc, PermissionError):
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = "uid %d" % os.geteuid()
        return ("%s (the module runs as %s: give that user access, or run the task with become/become_user)"
                % (exc, user))
    if isinstance(exc, OSError):
        return "%s: %s" % (type(exc).__name__, exc)
    return str(exc)
