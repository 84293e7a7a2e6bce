"""The lifecycle engine without S3: policy -> rules, the simulator, and a year of daily backups and WAL.

The year test is the proof the lab's S3 endpoint cannot give (it stores lifecycle rules but never runs them):
for each policy, every object a restore to any point inside the PITR window needs is present and not archived on
every day of the year, every object a restore inside the retention period needs is present, and the rules do act
(old objects are archived and expired).
"""

import bisect
import datetime

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import bucket as s3policy_bucket
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import derive as s3policy_derive
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import simulate as s3policy_simulate

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
YEAR_START = datetime.datetime(2026, 1, 1, tzinfo=UTC)
PREFIX = "auth-db"


def at(day, hour=0, minute=0):
    return YEAR_START + day * DAY + datetime.timedelta(hours=hour, minutes=minute)


# -- a year of backups -----------------------------------------------------------------------------------------------
def year_of_backups(every_days, start_hour=1, start_minute=30, duration=datetime.timedelta(minutes=50)):
    """Full base backups every ``every_days`` days at 01:30 taking 50 min (data, then WAL tar, then backup.json last),
    WAL segments archived every hour at :17. Returns (backups, objects); objects are (key, created)."""
    backups, objects = [], []
    day = 0
    while day < 365:
        start = at(day, start_hour, start_minute)
        end = start + duration
        bid = start.strftime("%Y%m%dT%H%M%SF")
        files = [(f"{PREFIX}/backup/{bid}/base.tar.lz4", start + datetime.timedelta(minutes=2)),
                 (f"{PREFIX}/backup/{bid}/pg_wal.tar.lz4", end - datetime.timedelta(minutes=1)),
                 (f"{PREFIX}/backup/{bid}/backup.json", end)]
        backups.append({"id": bid, "start": start, "end": end, "files": files})
        objects += files
        day += every_days
    wal = []
    t = at(0, 0, 17)
    n = 1
    while t < at(365):
        wal.append((f"{PREFIX}/wal/000000010000{n // 256:08X}000000{n % 256:02X}", t))
        t += HOUR
        n += 1
    return backups, objects + wal, wal


class WalList(list):
    """WAL objects in creation order, with their creation times for bisecting."""

    def __init__(self, items):
        super().__init__(items)
        self.times = [item[1] for item in items]


def needed(backups, wal, now, window_days):
    """Objects a restore to any target in [now - window, now] reads: the newest backup that ended before the
    window's start, every later backup, and all WAL from that backup's start to now. None when the window's start
    predates the first backup (nothing can restore it, whatever the rules)."""
    start = now - window_days * DAY
    before = [b for b in backups if b["end"] <= start]
    if not before:
        return None
    base = before[-1]
    keys = [f for b in backups if base["start"] <= b["start"] and b["end"] <= now for f in b["files"]]
    keys += wal[bisect.bisect_left(wal.times, base["start"]):bisect.bisect_right(wal.times, now)]
    return keys


POLICIES = [
    # (name, policy, backup every N days (the schedule; the policy's full_interval_days is its worst case))
    ("daily fulls, 7-day window, 30-day retention, GLACIER",
     {"pitr_window_days": 7, "full_interval_days": 1, "retention_days": 30}, 1),
    ("weekly fulls, 14-day window, 120-day retention, GLACIER",
     {"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120}, 7),
    ("weekly fulls taken daily, 14-day window, 120-day retention",
     {"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120}, 1),
    ("weekly fulls, 3-day window, a year, DEEP_ARCHIVE",
     {"pitr_window_days": 3, "full_interval_days": 7, "retention_days": 365, "archive_storage_class": "DEEP_ARCHIVE"},
     7),
    ("monthly fulls, 30-day window, 90-day retention, GLACIER_IR",
     {"pitr_window_days": 30, "full_interval_days": 30, "retention_days": 90, "archive_storage_class": "GLACIER_IR"},
     30),
    ("2-day fulls, window equals retention, no archive tier",
     {"pitr_window_days": 10, "full_interval_days": 2, "retention_days": 10, "archive_storage_class": None}, 2),
    ("explicit later numbers, STANDARD_IA",
     {"pitr_window_days": 7, "full_interval_days": 7, "retention_days": 60, "archive_storage_class": "STANDARD_IA",
      "archive_after_days": 35, "backup_expire_days": 90, "wal_expire_days": 100}, 7),
]


def check_year(rules, policy, every_days):
    """Every violation of the guarantee over the year, as readable strings (empty = the guarantee holds)."""
    backups, objects, wal = year_of_backups(every_days)
    wal = WalList(wal)
    timelines = {key: s3policy_simulate.object_timeline(rules, key, created) for key, created in objects}
    created_at = dict(objects)

    never = datetime.datetime.max.replace(tzinfo=UTC)
    gone_at, slow_at = {}, {}
    for key, timeline in timelines.items():
        gone_at[key] = min([event[0] for event in timeline if event[1] == "expire"] or [never])
        slow_at[key] = min([event[0] for event in timeline if event[2] in s3policy_derive.SLOW_CLASSES] or [never])

    problems = []
    for day in range(365):
        for now in (at(day), at(day, 1, 45), at(day, 13)):  # midnight, mid-backup, afternoon
            for window, need_fast in ((policy["pitr_window_days"], True), (policy["retention_days"], False)):
                keys = needed(backups, wal, now, window)
                for key in (k for k, created in keys or []):
                    gone, slow = gone_at[key] <= now, slow_at[key] <= now
                    if gone or (need_fast and slow):
                        state = "gone" if gone else "archived"
                        problems.append(f"{now}: {key} (created {created_at[key]}) is {state} but a restore inside "
                                        f"the last {window} days needs it")
                if len(problems) > 5:
                    return problems
    return problems


@pytest.mark.parametrize("name,policy,every_days", POLICIES, ids=[p[0] for p in POLICIES])
def test_a_year_of_backups_never_meets_a_slow_or_missing_object_inside_the_window(name, policy, every_days):
    plan = s3policy_derive.derive(policy)
    rules = s3policy_derive.build_rules(plan, PREFIX)
    assert s3policy_derive.validate_rules(rules) == []
    assert check_year(rules, policy, every_days) == []
    # ... and the rules are not vacuous: by the end of the year old objects are gone, and archived in between.
    backups, wal = year_of_backups(every_days)[::2]
    first_wal, first_created = wal[0]
    assert not s3policy_simulate.simulate(rules, first_wal, first_created,
                                          at(365))["present"] or plan["wal"]["expire_days"] > 364
    if plan["storage_class"] and plan["backup"]["archive_after_days"]:
        mid = first_created + (plan["backup"]["archive_after_days"] + 1) * DAY
        state = s3policy_simulate.simulate(rules, backups[0]["files"][0][0], backups[0]["files"][0][1], mid)
        assert state["present"] and state["storage_class"] == plan["storage_class"]


UNSAFE = [
    ("archive at the window's edge", lambda r: r[0]["Transitions"][0].update(Days=14)),
    ("WAL expires a week before the backups", lambda r: r[1]["Expiration"].update(Days=121)),
    ("backups expire at the retention age, ignoring the full interval", lambda r: r[0]["Expiration"].update(Days=120)),
]


@pytest.mark.parametrize("name,break_it", UNSAFE, ids=[u[0] for u in UNSAFE])
def test_the_year_check_catches_unsafe_rules(name, break_it):
    """The checker is not vacuous: hand-made rules that cut a corner are caught, by the year and by the probe the
    module runs before applying anything."""
    policy = {"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120}
    plan = s3policy_derive.derive(policy)
    rules = s3policy_derive.build_rules(plan, PREFIX)
    break_it(rules)
    assert check_year(rules, policy, 7)
    assert s3policy_simulate.guarantee_problems(rules, plan, PREFIX)


def test_a_foreign_rule_that_would_expire_backups_is_caught():
    plan = s3policy_derive.derive({"pitr_window_days": 7, "full_interval_days": 1, "retention_days": 30})
    foreign = {"ID": "cleanup-everything", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 10}}
    problems = s3policy_simulate.guarantee_problems([foreign] + s3policy_derive.build_rules(plan, PREFIX), plan, PREFIX)
    assert any("cleanup-everything" in p for p in problems)


# -- derived numbers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy,backup,wal,logical", [
    ({"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120},
     (22, 128), (22, 128), (14, 120)),
    ({"pitr_window_days": 7, "full_interval_days": 1, "retention_days": 30, "margin_days": 0},
     (8, 31), (8, 31), (7, 30)),
    ({"pitr_window_days": 7, "full_interval_days": 7, "retention_days": 60, "wal_expire_days": 80},
     (15, 68), (15, 80), (7, 60)),
])
def test_derived_ages(policy, backup, wal, logical):
    plan = s3policy_derive.derive(policy)
    got = [(plan[k]["archive_after_days"], plan[k]["expire_days"]) for k in ("backup", "wal", "logical")]
    assert got == [backup, wal, logical]


def test_rules_target_the_repository_layout():
    plan = s3policy_derive.derive({"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120})
    rules = s3policy_derive.build_rules(plan, "auth-db/")
    assert [(r["ID"], r["Filter"]["Prefix"]) for r in rules] == [
        ("immersiverse-dr-auth-db-backup", "auth-db/backup/"),
        ("immersiverse-dr-auth-db-wal", "auth-db/wal/"),
        ("immersiverse-dr-auth-db-logical", "auth-db/logical/"),
    ]
    assert rules[0] == {
        "ID": "immersiverse-dr-auth-db-backup", "Status": "Enabled", "Filter": {"Prefix": "auth-db/backup/"},
        "Transitions": [{"Days": 22, "StorageClass": "GLACIER"}], "Expiration": {"Days": 128},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
    }
    assert [r["Filter"]["Prefix"] for r in s3policy_derive.build_rules(s3policy_derive.derive(
        {"pitr_window_days": 1, "full_interval_days": 1, "retention_days": 1}), "")] == ["backup/", "wal/", "logical/"]


def test_no_transition_when_objects_expire_first():
    plan = s3policy_derive.derive({"pitr_window_days": 10, "full_interval_days": 2, "retention_days": 10})
    assert plan["backup"]["archive_after_days"] is None
    assert "Transitions" not in s3policy_derive.build_rules(plan, PREFIX)[0]
    assert any("no transition" in w for w in plan["warnings"])


# -- refused policies ------------------------------------------------------------------------------------------------
BASE = {"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120}


@pytest.mark.parametrize("change,expected", [
    ({"pitr_window_days": 30, "retention_days": 14}, "pitr_window_days (30) is longer than retention_days (14)"),
    ({"archive_storage_class": "COLD"}, "archive_storage_class 'COLD' is not a storage class"),
    ({"archive_storage_class": "glacier"}, "archive_storage_class 'glacier' is not a storage class"),
    ({"archive_after_days": 14},
     "archive_after_days (14) is less than pitr_window_days (14) + full_interval_days (7) + margin_days (1) = 22"),
    ({"backup_expire_days": 120},
     "backup_expire_days (120) is less than retention_days (120) + full_interval_days (7) + margin_days (1) = 128"),
    ({"wal_expire_days": 100}, "wal_expire_days (100) is less than backup_expire_days (128)"),
    ({"archive_storage_class": "STANDARD_IA", "pitr_window_days": 7, "full_interval_days": 7},
     "archive_after_days (15) is less than 30: S3 refuses transitions to STANDARD_IA"),
    ({"full_interval_days": 0}, "full_interval_days must be at least 1 (got 0)"),
    ({"retention_days": None}, "retention_days is required"),
    ({"logical_fast_days": 200}, "logical_fast_days (200) is longer than logical_retention_days (120)"),
    ({"keep_forever": True}, "unknown policy key keep_forever"),
])
def test_refused_policies_name_the_numbers(change, expected):
    policy = dict(BASE)
    for key, value in change.items():
        if value is None:
            policy.pop(key)
        else:
            policy[key] = value
    with pytest.raises(s3policy_derive.PolicyError) as err:
        s3policy_derive.derive(policy)
    assert expected in str(err.value)
    assert "nothing was changed" in str(err.value)


def test_every_conflict_is_reported_at_once():
    with pytest.raises(s3policy_derive.PolicyError) as err:
        s3policy_derive.derive({"pitr_window_days": 30, "full_interval_days": 7, "retention_days": 14,
                                "archive_storage_class": "COLD", "wal_expire_days": 3})
    text = str(err.value)
    assert "COLD" in text and "pitr_window_days (30)" in text and "wal_expire_days (3)" in text


@pytest.mark.parametrize("spec,expected", [
    ({"object_lock": {"mode": "FOREVER", "days": 3}}, "object_lock.mode must be GOVERNANCE or COMPLIANCE"),
    ({"encryption": {"sse_algorithm": "aws:kms"}}, "needs encryption.kms_key_id"),
    ({"encryption": None, "deny_unencrypted_uploads": True}, "deny_unencrypted_uploads needs encryption"),
    ({"deny_insecure_transport": True, "endpoint_url": "http://127.0.0.1:9000"}, "would lock out the endpoint"),
    ({"replication": {"role_arn": "replicator", "destinations": [{"bucket": "b"}]}}, "replication.role_arn must be"),
    ({"replication": {"role_arn": "arn:aws:iam::1:role/r", "destinations": [{"bucket": "b"}]}, "versioning": False},
     "replication needs versioning: true"),
])
def test_bucket_options_are_refused_before_reading_the_bucket(spec, expected):
    full = {"bucket": "bkt", "prefix": PREFIX, "policy": BASE, "versioning": True,
            "encryption": {"sse_algorithm": "AES256"}, "deny_insecure_transport": False,
            "deny_unencrypted_uploads": False, **spec}

    class NoClient:
        def __getattr__(self, name):
            raise AssertionError(f"S3 was called ({name}) before the spec was validated")

    with pytest.raises(s3policy_derive.PolicyError) as err:
        s3policy_bucket.reconcile(NoClient(), full)
    assert expected in str(err.value)


def test_validate_rules_catches_what_test_endpoints_accept():
    bad = [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""},
            "Transitions": [{"Days": 5, "StorageClass": "FOO"}]},
           {"ID": "a", "Status": "On", "Filter": {"Prefix": ""}, "Expiration": {"Days": 10},
            "Transitions": [{"Days": 10, "StorageClass": "STANDARD_IA"}]}]
    problems = s3policy_derive.validate_rules(bad)
    assert "rule ID a is used twice" in problems
    assert any("unknown storage class 'FOO'" in p for p in problems)
    assert any("Status must be" in p for p in problems)
    assert any("S3 needs at least 30" in p for p in problems)
    assert any("is not before expiration" in p for p in problems)


# -- the simulator's S3 semantics ------------------------------------------------------------------------------------
def test_actions_happen_at_the_next_midnight_utc():
    # AWS's own example: an object created 2014-01-15 10:30 UTC with Days: 3 expires 2014-01-19 00:00 UTC.
    created = datetime.datetime(2014, 1, 15, 10, 30, tzinfo=UTC)
    assert s3policy_simulate.action_time(created, 3) == datetime.datetime(2014, 1, 19, tzinfo=UTC)
    assert s3policy_simulate.action_time(datetime.datetime(2014, 1, 15, tzinfo=UTC), 3) == datetime.datetime(2014, 1,
                                                                                                             18,
                                                                                                             tzinfo=UTC)
    rule = {"ID": "r", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 3}}
    assert s3policy_simulate.simulate([rule], "x/a", created, datetime.datetime(2014, 1, 18, 23, 59,
                                                                                tzinfo=UTC))["present"]
    assert not s3policy_simulate.simulate([rule], "x/a", created, datetime.datetime(2014, 1, 19, tzinfo=UTC))["present"]


def test_expiration_wins_and_the_cheapest_transition_wins():
    rules = [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""},
              "Transitions": [{"Days": 10, "StorageClass": "GLACIER"}], "Expiration": {"Days": 30}},
             {"ID": "b", "Status": "Enabled", "Prefix": "k",
              "Transitions": [{"Days": 10, "StorageClass": "STANDARD_IA"}]},
             {"ID": "c", "Status": "Enabled",
              "Filter": {"And": {"Prefix": "k", "Tags": [{"Key": "t", "Value": "1"}]}},
              "Expiration": {"Days": 2}},
             {"ID": "off", "Status": "Disabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]
    created = at(0)
    assert s3policy_simulate.simulate(rules, "key", created, at(11)) == {"present": True, "storage_class": "GLACIER",
                                                                         "slow": True,
                                                                         "rule": "a"}
    assert s3policy_simulate.simulate(rules, "key", created, at(30))["present"] is False
    assert s3policy_simulate.simulate(rules, "key", created, at(2), tags={"t": "1"})["present"] is False
    assert s3policy_simulate.simulate(rules, "key", created, at(2))["present"] is True
    assert s3policy_simulate.simulate(rules, "key", created, at(11),
                                      size=1000)["storage_class"] == "STANDARD"  # < 128 KiB


def test_noncurrent_versions_follow_their_own_clock():
    rules = s3policy_derive.build_rules(s3policy_derive.derive(BASE), PREFIX)
    key = PREFIX + "/backup/x/base.tar"
    replaced = at(100)
    assert s3policy_simulate.simulate(rules, key, at(0), at(106), noncurrent_since=replaced)["present"]
    assert not s3policy_simulate.simulate(rules, key, at(0), at(107), noncurrent_since=replaced)["present"]


def test_other_repositories_and_other_prefixes_are_not_touched():
    rules = s3policy_derive.build_rules(s3policy_derive.derive(BASE), PREFIX)
    assert s3policy_simulate.object_timeline(rules, "other-db/backup/x/base.tar", at(0)) == []
    assert s3policy_simulate.object_timeline(rules, "auth-db/scratch/x", at(0)) == []
