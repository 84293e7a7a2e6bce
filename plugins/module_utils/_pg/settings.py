# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL settings compared the way the server reads them: booleans, units (kB, MB, ms, min), enums with
their aliases, and ``ALTER SYSTEM`` statements with the value quoted as a literal. One normalised compare-then-act
rule for every setting the collection manages.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import re
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection

# A setting satisfied by any value at least the desired one (a server with wal_level=logical can archive).
AT_LEAST = frozenset(("wal_level", "max_wal_senders"))
WAL_LEVEL_ORDER = {"minimal": 0, "replica": 1, "logical": 2}
# Hidden aliases PostgreSQL still accepts.
ENUM_ALIASES = {"wal_level": {"archive": "replica", "hot_standby": "replica"}}

# Bytes per memory unit and microseconds per time unit, as PostgreSQL spells them (case-sensitive).
MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
TIME_UNITS = {"us": 1, "ms": 1000, "s": 1000 ** 2, "min": 60 * 1000 ** 2, "h": 3600 * 1000 ** 2,
              "d": 86400 * 1000 ** 2}
_NUMBER_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")


class SettingError(pg_connection.PgError):
    """A request the module refuses, or a server state it cannot work with; the message says what to do."""


# -- normalisation --------------------------------------------------------------------------------------------------
def parse_bool(value):
    """PostgreSQL's boolean spellings (on/off, true/false, yes/no, 1/0 and unique prefixes), any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text and ("true".startswith(text) or "yes".startswith(text) or text in ("on", "1")):
        return True
    if text and ("false".startswith(text) or "no".startswith(text) or text in ("of", "off", "0")):
        return False
    raise ValueError("%r is not a boolean (on/off, true/false, yes/no, 1/0)" % (value,))


def unit_scale(unit):
    """``('memory'|'time', factor)`` for a pg_settings unit (``8kB``, ``16MB``, ``s``, ``min``); None without one."""
    if not unit:
        return None
    match = re.match(r"^(\d*)([A-Za-z]+)$", unit)
    if not match or (match.group(2) not in MEMORY_UNITS and match.group(2) not in TIME_UNITS):
        raise ValueError("unknown pg_settings unit %r" % (unit,))
    count = int(match.group(1) or 1)
    if match.group(2) in MEMORY_UNITS:
        return "memory", count * MEMORY_UNITS[match.group(2)]
    return "time", count * TIME_UNITS[match.group(2)]


def parse_number(value, vartype, unit, name="setting"):
    """A number with an optional unit, in the setting's own unit (pg_settings.unit), rounded like PostgreSQL for
    integers. ``parse_number('1min', 'integer', 's') == 60``; a bare number is already in the setting's unit."""
    if isinstance(value, bool):
        raise ValueError("%s: %r is not a number" % (name, value))
    if isinstance(value, (int, float)):
        number, suffix = float(value), ""
    else:
        match = _NUMBER_RE.match(str(value))
        if not match:
            raise ValueError("%s: %r is not a number" % (name, value))
        number, suffix = float(match.group(1)), match.group(2)
    if suffix:
        scale = unit_scale(unit)
        table = MEMORY_UNITS if scale and scale[0] == "memory" else TIME_UNITS
        if scale is None or suffix not in table:
            kinds = "no unit" if scale is None else "units %s" % "/".join(table)
            raise ValueError("%s: %r has a unit this setting does not take (it takes %s)" % (name, value, kinds))
        number = number * table[suffix] / scale[1]
    if vartype == "integer":
        return int(round(number))
    return number


def normalise(value, row):
    """The comparable form of ``value`` for the pg_settings ``row`` (needs vartype, unit, optional enumvals/name):
    booleans -> bool, numbers -> int/float in the setting's unit, enums -> lower case (aliases resolved),
    strings -> unchanged (None -> '')."""
    name = row.get("name") or "setting"
    vartype = row["vartype"]
    if vartype == "bool":
        try:
            return parse_bool(value)
        except ValueError as exc:
            raise ValueError("%s: %s" % (name, exc)) from None
    if vartype in ("integer", "real"):
        return parse_number(value, vartype, row.get("unit"), name)
    if vartype == "enum":
        choices = [c.lower() for c in (row.get("enumvals") or [])]
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            text = "on" if value else "off"
        else:
            text = str(value).strip().lower()
        text = ENUM_ALIASES.get(name, {}).get(text, text)
        if choices and text not in choices and "on" in choices and "off" in choices:
            try:
                text = "on" if parse_bool(text) else "off"
            except ValueError:
                pass
        if choices and text not in choices:
            raise ValueError("%s: %r is not one of %s" % (name, value, ", ".join(choices)))
        return text
    return "" if value is None else str(value)


def render(value, row):
    """How a normalised value is written in ALTER SYSTEM (and shown in diffs): '60s', 'on', 'replica'."""
    vartype = row["vartype"]
    if vartype == "bool":
        return "on" if value else "off"
    if vartype in ("integer", "real"):
        unit = row.get("unit") or ""
        text = "%d" % value if vartype == "integer" else repr(float(value))
        return text + unit if unit in MEMORY_UNITS or unit in TIME_UNITS else text
    return str(value)


def satisfies(name, current, desired):
    """Whether a normalised value meets the desired one (at least, for wal_level and max_wal_senders)."""
    if current is None:
        return False
    if name in AT_LEAST:
        if name == "wal_level":
            return WAL_LEVEL_ORDER.get(current, -1) >= WAL_LEVEL_ORDER.get(desired, 99)
        return current >= desired
    return current == desired


def quote_literal(text):
    """A SQL string literal, right whatever standard_conforming_strings says."""
    text = str(text)
    if "\\" in text:
        return "E'%s'" % text.replace("\\", "\\\\").replace("'", "''")
    return "'%s'" % text.replace("'", "''")


def alter_system_sql(name, text):
    if not re.match(r"^[a-z_]+$", name):
        raise ValueError("not a setting name: %r" % (name,))
    return "ALTER SYSTEM SET %s = %s" % (name, quote_literal(text))


# -- the plan -------------------------------------------------------------------------------------------------------
def configured_value(row, file_value):
    """The raw value the configuration files give a setting, i.e. what the server runs after a reload or restart:
    the running value when it comes from the command line or the environment (they override the files), else the
    last pg_file_settings entry, else (removed from the files) the built-in default."""
    if row.get("source") in ("command line", "environment variable"):
        return row["setting"]
    if file_value is not None:
        return file_value
    return row.get("boot_val")


# -- the server -----------------------------------------------------------------------------------------------------
def privileges(conn):
    row = pg_connection.query(conn, """
        SELECT current_user AS user,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
               pg_has_role(current_user, 'pg_monitor', 'USAGE') AS pg_monitor,
               pg_is_in_recovery() AS in_recovery,
               (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier
    """)[0]
    return row


def read_settings(conn, names):
    rows = pg_connection.query(conn, """
        SELECT name, setting, unit, vartype, context, enumvals, boot_val, source, pending_restart
          FROM pg_settings WHERE name = ANY(%s)
    """, (list(names),))
    return {r["name"]: r for r in rows}


def read_file_settings(conn, names):
    """The last valid value of each setting in the configuration files (postgresql.auto.conf comes last). A
    postmaster setting that differs from the running value is marked 'setting could not be applied' until the
    restart: that value counts."""
    rows = pg_connection.query(conn, """
        SELECT DISTINCT ON (name) name, setting
          FROM pg_file_settings
         WHERE name = ANY(%s) AND (error IS NULL OR error = 'setting could not be applied')
         ORDER BY name, seqno DESC
    """, (list(names),))
    return {r["name"]: r["setting"] for r in rows}


def file_setting_errors(conn):
    return ["%s:%s %s" % (r["sourcefile"], r["sourceline"], r["error"]) for r in pg_connection.query(
        conn, "SELECT sourcefile, sourceline, error FROM pg_file_settings "
              "WHERE error IS NOT NULL AND error <> 'setting could not be applied'")]


def wait_for_reload(conn, names, expected, timeout):
    """pg_reload_conf() only signals the postmaster; wait until pg_settings shows the new values."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_settings(conn, names)
        left = [n for n in names if render(normalise(rows[n]["setting"], rows[n]), rows[n]) != expected[n]]
        if not left:
            return
        if time.monotonic() > deadline:
            errors = file_setting_errors(conn)
            raise SettingError(
                "reloaded the configuration but %s still run the old value after %d s%s"
                % (", ".join(left), timeout,
                   "; the configuration files have errors: " + "; ".join(errors) if errors else
                   "; check the server log"))
        time.sleep(0.1)
