# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connecting to PostgreSQL: the modules' connection options, psycopg2 connections and queries, and the
argv and passfile the client programs (pg_basebackup, pg_dump, psql) get, so no password is ever on a command line.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import os
import re
import tempfile
from urllib.parse import unquote, urlsplit

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming


def conn_argv(conn):
    argv = []
    host = conn.get("login_unix_socket") or conn.get("login_host")
    if host:
        argv += ["-h", host]
    if conn.get("login_port"):
        argv += ["-p", str(conn["login_port"])]
    if conn.get("login_user"):
        argv += ["-U", conn["login_user"]]
    return argv


def pgpass_env(conn, directory):
    """Environment for a PostgreSQL client: the password in a 0600 pgpass file in ``directory``, never argv.
    Returns (env, path or None); the caller removes the file."""
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    password = conn.get("login_password")
    if not password:
        return env, None
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=".pgpass-", dir=directory)
    with os.fdopen(fd, "w") as fh:
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        fh.write("*:*:*:*:%s\n" % escaped)
    os.chmod(path, 0o600)
    env["PGPASSFILE"] = path
    env["PGCONNECT_TIMEOUT"] = str(conn.get("connect_timeout") or 5)
    return env, path


try:
    import psycopg2
    import psycopg2.extras

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the module
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = exc


class PgError(_errors.DrError):
    """A PostgreSQL problem the operator can act on; the message says what to do next."""


def connection_argument_spec():
    """The connection options every module of the collection shares (see doc_fragments/postgres.py)."""
    return dict(
        login_host=dict(type="str", default=""),
        login_port=dict(type="int", default=5432),
        login_user=dict(type="str", default="postgres"),
        login_password=dict(type="str", default="", no_log=True),
        login_unix_socket=dict(type="str", default=""),
        login_db=dict(type="str", default="postgres"),
        connect_timeout=dict(type="int", default=5),
        ssl_mode=dict(type="str", default="prefer",
                      choices=["allow", "disable", "prefer", "require", "verify-ca", "verify-full"]),
    )


def connect_kwargs(params):
    """Map module parameters to psycopg2.connect() keywords. A unix socket directory wins over a host."""
    kw = {
        "dbname": params.get("login_db") or "postgres",
        "user": params.get("login_user") or "postgres",
        "port": params.get("login_port") or 5432,
        "connect_timeout": params.get("connect_timeout") or 5,
        "application_name": "immersiverse.dr",
    }
    host = params.get("login_unix_socket") or params.get("login_host")
    if host:
        kw["host"] = host
    if params.get("login_password"):
        kw["password"] = params["login_password"]
    if params.get("ssl_mode") and not params.get("login_unix_socket"):
        kw["sslmode"] = params["ssl_mode"]
    return kw


def describe_target(params):
    """Where we connect, for error messages (never the password)."""
    where = params.get("login_unix_socket") or params.get("login_host") or "local socket"
    return "%s@%s:%s/%s" % (params.get("login_user") or "postgres", where, params.get("login_port") or 5432,
                            params.get("login_db") or "postgres")


def connect(params):
    if not HAS_PSYCOPG2:
        raise PgError("psycopg2 is required on the host the module runs on (Debian: apt install python3-psycopg2)")
    try:
        conn = psycopg2.connect(**connect_kwargs(params))
    except psycopg2.OperationalError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        hint = "is PostgreSQL running and reachable, and are the credentials right?"
        if "password authentication failed" in msg:
            hint = "the password is wrong for this user (check the vault / pgpass entry)"
        elif "timeout" in msg or "Connection refused" in msg or "could not connect" in msg:
            hint = "the server is down or unreachable from this host (check the region, firewall and port)"
        raise PgError("cannot connect to %s: %s; %s" % (describe_target(params), msg, hint)) from None
    conn.autocommit = True
    return conn


def query(conn, sql, args=None):
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, args)
        if cur.description is None:
            return []
        return [dict(r) for r in cur.fetchall()]


_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def lsn_to_int(lsn):
    """'16/B374D848' -> 0x16B374D848. None stays None. (WAL arithmetic lives in _wal.)"""
    return None if lsn is None else wal_naming.lsn_to_int(lsn)


int_to_lsn = wal_naming.int_to_lsn


def timeline_of_walfile(name):
    """The timeline of a WAL file name ('0000000200000000000000A1' -> 2)."""
    if not re.match(r"^[0-9A-F]{24}$", name or ""):
        raise ValueError("not a WAL segment name: %r" % (name,))
    return int(name[:8], 16)


def iso(value):
    return value.isoformat() if value is not None else None


def _conninfo_pairs(conninfo):
    """The keyword/value pairs of a libpq key/value conninfo, tokenised as libpq does (values in single quotes,
    backslash escapes, spaces around '='). None when it is malformed."""
    pairs, i, n = {}, 0, len(conninfo)
    while i < n:
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        while i < n and conninfo[i] != "=" and not conninfo[i].isspace():
            i += 1
        key = conninfo[start:i]
        while i < n and conninfo[i].isspace():
            i += 1
        if not key or i >= n or conninfo[i] != "=":
            return None
        i += 1
        while i < n and conninfo[i].isspace():
            i += 1
        value, quoted = [], i < n and conninfo[i] == "'"
        i += 1 if quoted else 0
        while i < n and (quoted or not conninfo[i].isspace()):
            if conninfo[i] == "\\" and i + 1 < n:
                value.append(conninfo[i + 1])
                i += 2
                continue
            if quoted and conninfo[i] == "'":
                break
            value.append(conninfo[i])
            i += 1
        if quoted:
            if i >= n:
                return None  # unterminated quote
            i += 1
        pairs[key] = "".join(value)
    return pairs


def upstream_of(conninfo):
    """{"host", "port"} of a libpq conninfo (primary_conninfo; key/value or URI), or None when it names no single
    host (none, several, or a string libpq would not parse). Never anything else of it: the string may hold a
    password."""
    if not conninfo:
        return None
    if re.match(r"^postgres(?:ql)?://", conninfo):
        try:
            parsed = urlsplit(conninfo)
            host, port = unquote(parsed.hostname or ""), str(parsed.port or "")
        except ValueError:
            return None
    else:
        pairs = _conninfo_pairs(conninfo)
        if pairs is None:
            return None
        host, port = pairs.get("host", ""), pairs.get("port", "")
    if not host or "," in host or "," in port:
        return None
    return {"host": host, "port": int(port) if port.isdigit() else 5432}


# The tasks behind the pg_info and pg_promote modules, as plain functions of (params, check_mode, diff) that return
# the module's result (``failed`` and ``msg`` when it fails). The modules call them; so do their action plugins, which
# run them on the target over the task's connection without the module wrapper (plugins/plugin_utils/_remote.py).
MISSING_PSYCOPG2 = "psycopg2 is required on the host the module runs on (Debian: apt install python3-psycopg2)"
