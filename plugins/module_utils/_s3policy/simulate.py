# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What S3 will do to an object under lifecycle rules, day by day: transitions, expiry and noncurrent
versions, and the check that no rule expires or archives what a restore the policy promises needs.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime

from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import derive as s3policy_derive


# -- the simulator -------------------------------------------------------------------------------------------------
def as_utc(when):
    if isinstance(when, datetime.datetime):
        return when.replace(tzinfo=datetime.timezone.utc) if when.tzinfo is None else when.astimezone(
            datetime.timezone.utc)
    if isinstance(when, datetime.date):
        return datetime.datetime(when.year, when.month, when.day, tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromisoformat(str(when).replace("Z", "+00:00")).astimezone(datetime.timezone.utc)


def action_time(start, days):
    """When S3 acts on a ``Days: N`` rule: start + N days, rounded up to the next midnight UTC (the earliest it can
    happen; S3 may act later, never earlier)."""
    t = as_utc(start) + datetime.timedelta(days=days)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == t else midnight + datetime.timedelta(days=1)


def rule_filter(rule):
    """(prefix, tags, size_greater_than, size_less_than) of a rule, whatever form S3 returned it in."""
    f = rule.get("Filter")
    if f is None:
        return rule.get("Prefix", ""), {}, None, None
    if "And" in f:
        a = f["And"]
        return (a.get("Prefix", ""), {t["Key"]: t["Value"] for t in a.get("Tags") or []},
                a.get("ObjectSizeGreaterThan"), a.get("ObjectSizeLessThan"))
    tags = {f["Tag"]["Key"]: f["Tag"]["Value"]} if "Tag" in f else {}
    return f.get("Prefix", ""), tags, f.get("ObjectSizeGreaterThan"), f.get("ObjectSizeLessThan")


def rule_matches(rule, key, size=None, tags=None):
    """Whether a rule applies to an object. An unknown size matches size filters (the worst case)."""
    if rule.get("Status") != "Enabled":
        return False
    prefix, rule_tags, greater, less = rule_filter(rule)
    if not key.startswith(prefix or ""):
        return False
    tags = tags or {}
    if any(tags.get(k) != v for k, v in rule_tags.items()):
        return False
    if size is not None and ((greater is not None and size <= greater) or (less is not None and size >= less)):
        return False
    return True


def object_timeline(rules, key, created, storage_class="STANDARD", size=None, tags=None, noncurrent_since=None):
    """Every action S3 will take on one object version, in time order: ``[(when, action, storage_class, rule_id)]``
    with action ``transition`` or ``expire``. ``noncurrent_since`` makes it a noncurrent version (versioned bucket).

    S3's conflict rules: expiration wins over transition; of the due transitions the cheapest class wins; a
    transition never moves an object to a more expensive class; objects below 128 KiB are not transitioned.
    """
    events = []
    for rule in rules:
        if not rule_matches(rule, key, size, tags):
            continue
        rid = rule.get("ID", "")
        if noncurrent_since is None:
            exp = rule.get("Expiration") or {}
            if exp.get("Days") is not None:
                events.append((action_time(created, exp["Days"]), "expire", None, rid))
            elif exp.get("Date") is not None:
                events.append((as_utc(exp["Date"]), "expire", None, rid))
            for t in rule.get("Transitions") or []:
                when = action_time(created, t["Days"]) if t.get("Days") is not None else as_utc(t["Date"])
                events.append((when, "transition", t["StorageClass"], rid))
        else:
            nexp = rule.get("NoncurrentVersionExpiration") or {}
            if nexp.get("NoncurrentDays") is not None:
                events.append((action_time(noncurrent_since, nexp["NoncurrentDays"]), "expire", None, rid))
            for t in rule.get("NoncurrentVersionTransitions") or []:
                events.append((action_time(noncurrent_since, t["NoncurrentDays"]), "transition", t["StorageClass"],
                               rid))
    events.sort(key=lambda e: (e[0], 0 if e[1] == "expire" else 1,
                               -s3policy_derive.COST_ORDER.index(e[2]) if e[2] else 0))
    out = []
    current = storage_class
    for when, action, sc, rid in events:
        if action == "expire":
            out.append((when, action, None, rid))
            break
        if size is not None and size < s3policy_derive.MIN_TRANSITION_SIZE:
            continue
        if sc in s3policy_derive.COST_ORDER and (
            current not in s3policy_derive.COST_ORDER or s3policy_derive.COST_ORDER.index(
                sc) > s3policy_derive.COST_ORDER.index(current)):
            current = sc
            out.append((when, action, sc, rid))
    return out


def simulate(rules, key, created, on, storage_class="STANDARD", size=None, tags=None, noncurrent_since=None):
    """What S3 has done to one object version by ``on``: ``{"present", "storage_class", "slow", "rule"}``
    (``rule`` = the rule that last acted on it, or None)."""
    on = as_utc(on)
    state = {"present": True, "storage_class": storage_class, "slow": storage_class in s3policy_derive.SLOW_CLASSES,
             "rule": None}
    for when, action, sc, rid in object_timeline(rules, key, created, storage_class, size, tags, noncurrent_since):
        if when > on:
            break
        state["rule"] = rid
        if action == "expire":
            state.update(present=False, storage_class=None, slow=False)
        else:
            state.update(storage_class=sc, slow=sc in s3policy_derive.SLOW_CLASSES)
    return state


def guarantee_problems(rules, plan, prefix):
    """Run the simulator on the bucket's whole rule set (ours and anyone else's) for the worst-case object of each
    kind: created exactly at midnight UTC, read at the last moment it may be needed. Returns the broken
    promises, naming the rule that breaks them."""
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    eps = datetime.timedelta(seconds=1)
    out = []
    for kind, key_prefix in s3policy_derive.kind_prefixes(prefix).items():
        key = key_prefix + "20260101T000000F/probe"
        k = plan[kind]
        fast = simulate(rules, key, created, created + datetime.timedelta(days=k["fast_days"]) - eps)
        if not fast["present"] or fast["slow"]:
            out.append("%s objects must stay fast to read for %d days, but rule %s %s them earlier"
                       % (kind, k["fast_days"], fast["rule"], "expires" if not fast["present"] else "archives"))
            continue
        keep = simulate(rules, key, created, created + datetime.timedelta(days=k["keep_days"]) - eps)
        if not keep["present"]:
            out.append("%s objects must be kept for %d days, but rule %s expires them earlier"
                       % (kind, k["keep_days"], keep["rule"]))
    return out
