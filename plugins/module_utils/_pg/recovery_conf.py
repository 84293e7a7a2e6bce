# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""postgresql.auto.conf as PostgreSQL's own parser reads it: quoting, parsing, effective values, and the
recovery settings' values (targets, times, timelines) validated and compared the way the server compares them.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import re

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import settings as pg_settings
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

try:
    import zoneinfo
except ImportError:  # pragma: no cover - Python < 3.9
    zoneinfo = None
# The module parameter that holds each target's value, and the setting it is written to.
TARGET_PARAMS = {"time": "target_time", "lsn": "target_lsn", "xid": "target_xid", "name": "target_name"}
# pg_create_restore_point() refuses names longer than this (MAXFNAMELEN - 1).
MAX_RESTORE_POINT_NAME = 63
MAX_XID = 2 ** 64 - 1  # PostgreSQL 13+ reads recovery_target_xid with strtou64 (epoch-qualified xids work)
FIRST_NORMAL_XID = 3

# PostgreSQL's configuration lexer (src/backend/utils/misc/guc-file.l): `name [=] value [# comment]` per line,
# whitespace is [ \t\r\f], a quoted string may hold '' or a backslash escape, an unquoted value is an identifier,
# number or path-like word.
_WS = r"[ \t\r\f]*"
_ID = r"[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*"
_STRING = r"'(?:[^'\\\n]|\\.|'')*'"
_UNQUOTED = r"[A-Za-z0-9_\u0080-\U0010FFFF+\-.:/]+"
_SETTING_RE = re.compile(
    r"^{ws}(?P<name>{id}(?:\.{id})?)(?:{ws}={ws}|[ \t\r\f]+|(?='))(?P<value>{string}|{unquoted}){ws}(?:#.*)?$".format(
        ws=_WS, id=_ID, string=_STRING, unquoted=_UNQUOTED))
_BLANK_RE = re.compile(r"^{ws}(?:#.*)?$".format(ws=_WS))
_LEAD_RE = re.compile(r"^{ws}({id})".format(ws=_WS, id=_ID))
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

_TIME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,6}))?)?"
    r"(?:[ ]*(?P<zone>[Zz]|UTC|utc|GMT|gmt|[+-]\d{2}(?::?\d{2})?|[A-Za-z_]+(?:/[A-Za-z0-9_+\-]+)+))?$")
TIME_EXAMPLE = "2026-03-01 12:00:00+00:00 (UTC), 2026-03-01 13:00:00+01:00 or 2026-03-01 13:00:00 Europe/Paris"
_ABBREVIATION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?[ ]*[A-Za-z]{2,6}$")


class RecoveryError(_errors.DrError):
    """A request the module refuses, or a data directory it cannot work on; the message says what to do."""


# -- PostgreSQL's configuration syntax ------------------------------------------------------------------------------
def quote(value):
    """A configuration-file string literal as ALTER SYSTEM writes it: single quotes, ' and \\ doubled."""
    return "'%s'" % str(value).replace("\\", "\\\\").replace("'", "''")


def unquote(token):
    """The value of a configuration token, read as PostgreSQL reads it (GUC_scanstr for quoted strings)."""
    if not token.startswith("'"):
        return token
    text, out, i = token[1:-1], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
            elif nxt in "01234567":
                digits = re.match(r"[0-7]{1,3}", text[i + 1:]).group(0)
                byte = int(digits, 8) & 0xFF
                out.append(chr(byte) if byte < 0x80 else chr(0xDC00 + byte))  # a raw byte, as surrogateescape reads it
                i += 1 + len(digits)
            else:
                out.append(nxt)
                i += 2
        elif char == "'" and text[i + 1:i + 2] == "'":
            out.append("'")
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def render_line(name, value):
    return "%s = %s\n" % (name, quote(value))


def split_lines(text):
    """Lines with their endings, split at \\n only (where PostgreSQL's lexer ends a line)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def parse_conf(text):
    """One entry per line: {"line", "raw", "name", "value"}. ``name`` (lower case, as PostgreSQL compares setting
    names) and ``value`` are None for blank lines, comments and lines that do not parse; those also carry
    ``"unparsed"``: the word they start with (lower case), or "" for blank and comment lines."""
    entries = []
    for number, raw in enumerate(split_lines(text), 1):
        body = raw[:-1] if raw.endswith("\n") else raw
        match = _SETTING_RE.match(body)
        if match:
            entries.append({"line": number, "raw": raw, "name": match.group("name").lower(),
                            "value": unquote(match.group("value"))})
            continue
        lead = None if _BLANK_RE.match(body) else _LEAD_RE.match(body)
        entries.append({"line": number, "raw": raw, "name": None, "value": None,
                        "unparsed": lead.group(1).lower() if lead else ("" if _BLANK_RE.match(body) else "?")})
    return entries


def effective(entries, names):
    """The value each of ``names`` has after the file is read (the last line that sets it wins)."""
    values = {}
    for entry in entries:
        if entry["name"] in names:
            values[entry["name"]] = entry["value"]
    return values


# -- values ---------------------------------------------------------------------------------------------------------
def check_text(name, value):
    if value is None:
        return
    if not isinstance(value, str):
        raise RecoveryError("%s must be a string" % name)
    for char, what in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if char in value:
            # Never echo the value: primary_conninfo may carry a password.
            raise RecoveryError("%s contains %s, which a PostgreSQL configuration value cannot hold; give it on one "
                                "line" % (name, what))


def parse_time(text, name="target_time"):
    """An aware datetime for a timestamp with an explicit zone: an offset (+01:00, +0100, +01), Z/UTC/GMT, or an IANA
    zone name after a space (a wall time that zone skips or repeats is refused). A time without a zone is refused:
    PostgreSQL would read it in the server's TimeZone, which may not be the zone the operator means."""
    match = _TIME_RE.match(str(text).strip())
    if not match and _ABBREVIATION_RE.match(str(text).strip()):
        raise RecoveryError("%s %r ends in a time zone abbreviation; abbreviations are ambiguous (IST, CST) and depend "
                            "on the server's timezone_abbreviations. Write it like %s" % (name, text, TIME_EXAMPLE))
    if not match:
        raise RecoveryError("%s %r is not a timestamp with a time zone; write it like %s" % (name, text, TIME_EXAMPLE))
    try:
        wall = datetime.datetime.strptime(
            "%s %s:%s:%s.%s" % (match.group("date"), match.group("hour"), match.group("minute"),
                                match.group("second") or "00", (match.group("fraction") or "0").ljust(6, "0")),
            "%Y-%m-%d %H:%M:%S.%f")
    except ValueError as exc:
        raise RecoveryError("%s %r is not a valid date and time (%s); write it like %s"
                            % (name, text, exc, TIME_EXAMPLE)) from None
    zone = match.group("zone")
    if zone is None:
        raise RecoveryError(
            "%s %r has no time zone: PostgreSQL would read it in the server's TimeZone setting, which may not be the "
            "zone you mean. Add one, like %s" % (name, text, TIME_EXAMPLE))
    if zone.upper() in ("Z", "UTC", "GMT"):
        return wall.replace(tzinfo=datetime.timezone.utc)
    if zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 15 or minutes > 59:
            raise RecoveryError("%s %r: %s is not a UTC offset (-15:59 to +15:59)" % (name, text, zone))
        offset = datetime.timedelta(hours=hours, minutes=minutes)
        return wall.replace(tzinfo=datetime.timezone(-offset if zone[0] == "-" else offset))
    if zoneinfo is None:  # pragma: no cover - Python < 3.9
        raise RecoveryError("%s %r: this Python cannot read time zone names; give a UTC offset instead" % (name, text))
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise RecoveryError("%s %r: unknown time zone %r; use an IANA name like Europe/Paris or a UTC offset like "
                            "+01:00" % (name, text, zone)) from None
    first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        raise RecoveryError(
            "%s %r: %s happens twice or not at all in %s (a daylight saving change); give the UTC offset you mean, "
            "like %s%s" % (name, text, wall, zone, wall.strftime("%Y-%m-%d %H:%M:%S"), _offset(first.utcoffset())))
    return first


def _offset(delta):
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return "%s%02d:%02d%s" % (sign, hours, minutes, ":%02d" % secs if secs else "")


def render_time(moment):
    """The timestamp as written: the wall time in its own zone with the explicit UTC offset."""
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += ".%06d" % moment.microsecond
    return text + _offset(moment.utcoffset())


def _c_unsigned(text):
    """strtoul/strtou64 with base 0, as PostgreSQL reads timelines and xids: 0x... hex, 0... octal, else decimal."""
    text = text.strip()
    match = re.match(r"^(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))$", text)
    if not match:
        raise ValueError(text)
    if match.group(1):
        return int(match.group(1), 16)
    if match.group(2):
        return int(match.group(2), 8)
    return int(match.group(3))


def _integer_param(name, value, low, high, hint):
    if isinstance(value, bool):
        raise RecoveryError("%s must be a number, not %r; %s" % (name, value, hint))
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.match(r"^\s*\d+\s*$", value):
        number = int(value)
    else:
        raise RecoveryError("%s %r is not a whole number; %s" % (name, value, hint))
    if not low <= number <= high:
        raise RecoveryError("%s %s is out of range (%d to %d); %s" % (name, number, low, high, hint))
    return number


def target_value(target, value):
    """The canonical text written for a target's value, after validating it."""
    name = TARGET_PARAMS[target]
    if target == "time":
        return render_time(parse_time(value, name))
    if target == "lsn":
        try:
            return wal_naming.int_to_lsn(wal_naming.lsn_to_int(str(value).strip()))
        except ValueError:
            raise RecoveryError("target_lsn %r is not an LSN: write it as two hexadecimal numbers like 0/3000060 "
                                "(pg_current_wal_lsn() prints them so)" % (value,)) from None
    if target == "xid":
        return str(_integer_param(name, value, FIRST_NORMAL_XID, MAX_XID,
                                  "give a transaction id as txid_current() or pg_current_xact_id() prints it"))
    text = None if value is None else str(value)
    if not text or not text.strip():
        raise RecoveryError("target_name is empty: give the name of a restore point made with "
                            "pg_create_restore_point()")
    bad = [c for c in ("'", '"', "\n", "\r", "\0") if c in text]
    if bad:
        raise RecoveryError("target_name %r contains a quote or a line break; restore point names for this module "
                            "are plain words (pg_create_restore_point('before_migration'))" % (text,))
    if len(text) > MAX_RESTORE_POINT_NAME:
        raise RecoveryError("target_name is %d characters; PostgreSQL restore point names have at most %d"
                            % (len(text), MAX_RESTORE_POINT_NAME))
    return text


def timeline_value(value):
    """recovery_target_timeline: latest (default), current, or a timeline number."""
    if value is None:
        return "latest"
    if isinstance(value, str) and value.strip().lower() in ("latest", "current"):
        return value.strip().lower()
    hint = "use latest (follow the newest timeline in the archive), current, or a timeline number like 2"
    return str(_integer_param("target_timeline", value, 1, 2 ** 32 - 1, hint))


def comparable(name, value):
    """A form of a setting's value in which two spellings PostgreSQL reads the same compare equal (a value that does
    not parse stays a string, so it never equals a valid one and gets rewritten)."""
    if value is None:
        return None
    try:
        if name == "recovery_target_time":
            return parse_time(value).astimezone(datetime.timezone.utc)
        if name == "recovery_target_lsn":
            return wal_naming.lsn_to_int(value.strip())
        if name == "recovery_target_xid":
            return _c_unsigned(value)
        if name == "recovery_target_timeline":
            return value if value in ("latest", "current") else _c_unsigned(value)
        if name == "recovery_target_inclusive":
            return pg_settings.parse_bool(value)
        if name == "recovery_target_action":
            return value.strip().lower()
    except (RecoveryError, ValueError):
        return ("unparsed", value)
    return value


def same_value(name, current, wanted):
    return comparable(name, current) == comparable(name, wanted)
