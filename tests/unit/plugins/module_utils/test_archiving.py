import datetime

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import settings as pg_settings
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import server as wal_server

# pg_settings rows as PostgreSQL 15 reports them (the columns plan() reads).
ROWS = {
    "wal_level": {"name": "wal_level", "setting": "replica", "unit": None, "vartype": "enum", "context": "postmaster",
                  "enumvals": ["minimal", "replica", "logical"], "boot_val": "replica", "source": "default",
                  "pending_restart": False},
    "max_wal_senders": {"name": "max_wal_senders", "setting": "10", "unit": None, "vartype": "integer",
                        "context": "postmaster", "enumvals": None, "boot_val": "10", "source": "default",
                        "pending_restart": False},
    "archive_mode": {"name": "archive_mode", "setting": "off", "unit": None, "vartype": "enum",
                     "context": "postmaster", "enumvals": ["always", "on", "off"], "boot_val": "off",
                     "source": "default", "pending_restart": False},
    "archive_library": {"name": "archive_library", "setting": "", "unit": None, "vartype": "string",
                        "context": "sighup", "enumvals": None, "boot_val": "", "source": "default",
                        "pending_restart": False},
    "archive_command": {"name": "archive_command", "setting": "(disabled)", "unit": None, "vartype": "string",
                        "context": "sighup", "enumvals": None, "boot_val": "", "source": "default",
                        "pending_restart": False},
    "archive_timeout": {"name": "archive_timeout", "setting": "0", "unit": "s", "vartype": "integer",
                        "context": "sighup", "enumvals": None, "boot_val": "0", "source": "default",
                        "pending_restart": False},
    "restore_command": {"name": "restore_command", "setting": "", "unit": None, "vartype": "string",
                        "context": "sighup", "enumvals": None, "boot_val": "", "source": "default",
                        "pending_restart": False},
}
SECONDS = {"vartype": "integer", "unit": "s", "name": "archive_timeout"}
MS = {"vartype": "integer", "unit": "ms", "name": "wal_sender_timeout"}
PAGES = {"vartype": "integer", "unit": "8kB", "name": "shared_buffers"}
KB = {"vartype": "integer", "unit": "kB", "name": "work_mem"}
MB = {"vartype": "integer", "unit": "MB", "name": "max_wal_size"}
BOOL = {"vartype": "bool", "unit": None, "name": "wal_log_hints"}
REAL = {"vartype": "real", "unit": None, "name": "checkpoint_completion_target"}


@pytest.mark.parametrize("row, values, expected", [
    (SECONDS, [60, "60", "60s", "1min", " 60 s", "60000ms", "1.0min", 60.0], 60),
    (SECONDS, ["0", 0, "0min"], 0),
    (SECONDS, ["1500ms"], 2),  # PostgreSQL rounds to the setting's unit
    (SECONDS, ["1h", "3600", "60min"], 3600),
    (MS, ["1min", "60s", 60000], 60000),
    (PAGES, ["16MB", "16384kB", "2048", 2048], 2048),
    (KB, ["16MB", "16384kB", "16384", "0.015625GB"], 16384),
    (MB, ["1GB", "1024", "1048576kB"], 1024),
    (BOOL, [True, "on", "ON", "true", "yes", "1", "t", "tr", "y", 1], True),
    (BOOL, [False, "off", "Off", "false", "no", "0", "f", "n", "of", 0], False),
    (REAL, ["0.9", 0.9, " 0.9 "], 0.9),
    (ROWS["archive_mode"], ["on", "ON", True, "true", "yes", "1"], "on"),
    (ROWS["archive_mode"], ["Always", "always"], "always"),
    (ROWS["archive_mode"], ["off", False, "no"], "off"),
    (ROWS["wal_level"], ["replica", "REPLICA", "hot_standby", "archive"], "replica"),
    (ROWS["archive_command"], ["cp %p /a/%f"], "cp %p /a/%f"),
    (ROWS["archive_command"], [None, ""], ""),
])
def test_normalise_equal_spellings(row, values, expected):
    assert [pg_settings.normalise(v, row) for v in values] == [expected] * len(values)


@pytest.mark.parametrize("row, value, words", [
    (SECONDS, "60MB", "unit this setting does not take"),
    (SECONDS, "soon", "not a number"),
    (SECONDS, True, "not a number"),
    (ROWS["max_wal_senders"], "10s", "no unit"),
    (KB, "10min", "units B/kB/MB/GB/TB"),
    (BOOL, "o", "not a boolean"),
    (BOOL, "maybe", "not a boolean"),
    (ROWS["wal_level"], "verbose", "not one of minimal, replica, logical"),
])
def test_normalise_rejects_with_a_reason(row, value, words):
    with pytest.raises(ValueError) as err:
        pg_settings.normalise(value, row)
    assert words in str(err.value)
    assert row["name"] in str(err.value)


@pytest.mark.parametrize("value, row, text", [
    (60, SECONDS, "60s"), (2048, PAGES, "2048"), (16384, KB, "16384kB"), (True, BOOL, "on"),
    ("always", ROWS["archive_mode"], "always"), ("cp %p x", ROWS["archive_command"], "cp %p x"),
])
def test_render(value, row, text):
    assert pg_settings.render(value, row) == text
    assert pg_settings.normalise(text, row) == value


@pytest.mark.parametrize("name, text, sql", [
    ("archive_timeout", "60s", "ALTER SYSTEM SET archive_timeout = '60s'"),
    ("archive_command", "test ! -f '/a b/%f' && cp %p '/a b/%f'",
     "ALTER SYSTEM SET archive_command = 'test ! -f ''/a b/%f'' && cp %p ''/a b/%f'''"),
    ("archive_command", r"copy %p C:\wal\%f", r"ALTER SYSTEM SET archive_command = E'copy %p C:\\wal\\%f'"),
    ("archive_command", "", "ALTER SYSTEM SET archive_command = ''"),
])
def test_alter_system_sql_quotes(name, text, sql):
    assert pg_settings.alter_system_sql(name, text) == sql


def test_alter_system_sql_refuses_odd_names():
    with pytest.raises(ValueError):
        pg_settings.alter_system_sql("archive_command; DROP TABLE x", "x")


@pytest.mark.parametrize("rpo, timeout", [(60, 30), (61, 30), (90, 45), (300, 150), (600, 300), (3601, 1800)])
def test_archive_timeout_is_half_the_rpo_with_a_floor(rpo, timeout):
    assert wal_server.derive_archive_timeout(rpo) == timeout


@pytest.mark.parametrize("rpo", [0, 10, 59, None])
def test_rpo_targets_archiving_cannot_meet_are_refused(rpo):
    with pytest.raises(pg_settings.SettingError) as err:
        wal_server.derive_archive_timeout(rpo)
    assert "synchronous replication" in str(err.value)


def present(**kw):
    params = {"state": "present", "archive_command": "cp %p /a/%f", "archive_mode": "on", "rpo_seconds": 300,
              "archive_timeout": None, "wal_level": "replica", "max_wal_senders": 10, "restore_command": None}
    params.update(kw)
    return params


def test_desired_settings_present_and_absent():
    desired, notes = wal_server.desired_settings(present())
    assert desired == {"wal_level": "replica", "max_wal_senders": 10, "archive_mode": "on", "archive_library": "",
                       "archive_command": "cp %p /a/%f", "archive_timeout": 150}
    assert notes == ["archive_timeout=150s derived from rpo_seconds=300"]
    desired, notes = wal_server.desired_settings(present(archive_timeout="1min", restore_command="cp /a/%f %p",
                                                         archive_mode=True))
    assert (desired["archive_timeout"], desired["restore_command"], desired["archive_mode"]) == \
        ("1min", "cp /a/%f %p", "on")
    assert notes == []
    assert wal_server.desired_settings({"state": "absent"})[0] == \
        {"archive_mode": "off", "archive_command": "", "archive_timeout": 0}


@pytest.mark.parametrize("kw, words", [
    ({"archive_command": None}, "archive_command is required"),
    ({"archive_command": "  "}, "state=absent"),
    ({"archive_mode": "off"}, "use on or always"),
    ({"rpo_seconds": 30}, "rpo_seconds=30"),
])
def test_desired_settings_refuses(kw, words):
    with pytest.raises(pg_settings.SettingError) as err:
        wal_server.desired_settings(present(**kw))
    assert words in str(err.value)


def rows(**running):
    """ROWS with some running values changed."""
    out = {name: dict(row) for name, row in ROWS.items()}
    for name, value in running.items():
        out[name]["setting"] = value
    return out


def test_plan_fresh_server_needs_a_restart_and_changes_only_what_differs():
    desired, _notes = wal_server.desired_settings(present())
    steps = wal_server.plan(desired, rows(), {})
    assert [c["name"] for c in steps["changes"]] == ["archive_mode", "archive_command", "archive_timeout"]
    assert [c["sql"] for c in steps["changes"]] == [
        "ALTER SYSTEM SET archive_mode = 'on'",
        "ALTER SYSTEM SET archive_command = 'cp %p /a/%f'",
        "ALTER SYSTEM SET archive_timeout = '150s'",
    ]
    assert steps["restart"] == ["archive_mode"]
    # archive_command shows '(disabled)' while archive_mode is off: the restart loads it, no reload needed for it
    assert steps["reload"] == ["archive_timeout"]
    assert steps["before"]["archive_mode"] == "off" and steps["after"]["archive_mode"] == "on"
    assert steps["after"]["wal_level"] == "replica" and steps["after"]["archive_timeout"] == "150s"


def test_plan_after_alter_system_but_before_the_restart_changes_nothing_and_still_asks_for_it():
    desired, _notes = wal_server.desired_settings(present())
    files = {"archive_mode": "on", "archive_command": "cp %p /a/%f", "archive_timeout": "150"}
    steps = wal_server.plan(desired, rows(archive_command="cp %p /a/%f", archive_timeout="150"), files)
    assert steps["changes"] == []
    assert steps["restart"] == ["archive_mode"] and steps["reload"] == []


def test_plan_everything_in_place_is_no_change():
    desired, _notes = wal_server.desired_settings(present(archive_timeout="150s"))
    files = {"archive_mode": "on", "archive_command": "cp %p /a/%f", "archive_timeout": "2.5min"}
    steps = wal_server.plan(desired, rows(archive_mode="on", archive_command="cp %p /a/%f",
                                          archive_timeout="150"), files)
    # the running values, spelled as ALTER SYSTEM would write them: the same before and after, nothing to do
    running = {"wal_level": "replica", "max_wal_senders": "10", "archive_mode": "on", "archive_library": "",
               "archive_command": "cp %p /a/%f", "archive_timeout": "150s"}
    assert steps == {"changes": [], "before": running, "after": running, "restart": [], "reload": []}


def test_plan_reload_only_change():
    desired, _notes = wal_server.desired_settings(present(archive_command="cp %p /b/%f"))
    files = {"archive_mode": "on", "archive_command": "cp %p /a/%f", "archive_timeout": "150"}
    steps = wal_server.plan(desired, rows(archive_mode="on", archive_command="cp %p /a/%f",
                                          archive_timeout="150"), files)
    assert [c["name"] for c in steps["changes"]] == ["archive_command"]
    assert steps["changes"][0]["context"] == "sighup"
    assert (steps["restart"], steps["reload"]) == ([], ["archive_command"])


def test_plan_minimums_are_not_lowered():
    desired, _notes = wal_server.desired_settings(present(max_wal_senders=5))
    files = {"wal_level": "logical", "max_wal_senders": "20", "archive_mode": "on", "archive_command": "cp %p /a/%f",
             "archive_timeout": "150"}
    steps = wal_server.plan(desired, rows(wal_level="logical", max_wal_senders="20", archive_mode="on",
                                          archive_command="cp %p /a/%f", archive_timeout="150"), files)
    assert steps["changes"] == []
    assert steps["after"]["wal_level"] == "logical" and steps["after"]["max_wal_senders"] == "20"


def test_plan_raises_minimums_from_minimal():
    desired, _notes = wal_server.desired_settings(present(wal_level="replica", max_wal_senders=10))
    files = {"wal_level": "minimal", "max_wal_senders": "0"}
    steps = wal_server.plan(desired, rows(wal_level="minimal", max_wal_senders="0"), files)
    assert [c["name"] for c in steps["changes"]][:2] == ["wal_level", "max_wal_senders"]
    assert steps["restart"] == ["wal_level", "max_wal_senders", "archive_mode"]


def test_plan_pending_restart_counts_even_when_values_match():
    desired, _notes = wal_server.desired_settings(present())
    running = rows(archive_mode="on", archive_command="cp %p /a/%f", archive_timeout="150")
    running["wal_level"]["pending_restart"] = True
    steps = wal_server.plan(desired, running, {"archive_mode": "on", "archive_command": "cp %p /a/%f",
                                               "archive_timeout": "150"})
    assert steps["changes"] == [] and steps["restart"] == ["wal_level"]


def test_plan_absent():
    desired, _notes = wal_server.desired_settings({"state": "absent"})
    files = {"archive_mode": "on", "archive_command": "cp %p /a/%f", "archive_timeout": "150"}
    steps = wal_server.plan(desired, rows(archive_mode="on", archive_command="cp %p /a/%f",
                                          archive_timeout="150"), files)
    assert [c["sql"] for c in steps["changes"]] == [
        "ALTER SYSTEM SET archive_mode = 'off'", "ALTER SYSTEM SET archive_command = ''",
        "ALTER SYSTEM SET archive_timeout = '0s'"]
    assert steps["restart"] == ["archive_mode"]


def test_plan_refuses_settings_from_the_command_line():
    desired, _notes = wal_server.desired_settings(present())
    running = rows(archive_mode="off")
    running["archive_mode"]["source"] = "command line"
    with pytest.raises(pg_settings.SettingError) as err:
        wal_server.plan(desired, running, {"archive_mode": "on"})
    assert "command line" in str(err.value)


def test_configured_value_falls_back_to_the_default_when_removed_from_the_files():
    row = dict(ROWS["archive_timeout"], setting="60", source="configuration file")
    assert pg_settings.configured_value(row, None) == "0"
    assert pg_settings.configured_value(row, "1min") == "1min"


# -- status ---------------------------------------------------------------------------------------------------------
T0 = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.UTC)
SEG = 16 * 1024 * 1024


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


def archiver(last=None, last_time=None, failed=0, count=0):
    return {"archived_count": count, "last_archived_wal": last, "last_archived_time": last_time,
            "failed_count": failed, "last_failed_wal": None, "last_failed_time": None, "stats_reset": T0}


def status(arch, ready, lsn, now, mode="on", timeout=150, in_recovery=False, timeline=1):
    return wal_server.archive_status(arch, ready, {"lsn": lsn, "timeline": timeline}, now, mode, timeout,
                                     in_recovery=in_recovery, segment_size=SEG)


def test_status_idle_database_just_after_a_switch_is_not_lagging():
    st = status(archiver("000000010000000000000004", at(0), count=4), [], "0/5000028", at(3600))
    assert (st["lag_segments"], st["lag_seconds"], st["ready_count"]) == (0, 0.0, 0)
    assert (st["rpo_seconds"], st["rpo_basis"]) == (0.0, "nothing_unarchived")
    assert st["current_wal"] == "000000010000000000000005"


def test_status_written_since_last_archive_is_bounded_by_archive_timeout():
    st = status(archiver("000000010000000000000004", at(0)), [], "0/5001000", at(40))
    assert (st["lag_segments"], st["rpo_seconds"], st["rpo_basis"]) == (0, 40.0, "since_last_archived")
    st = status(archiver("000000010000000000000004", at(0)), [], "0/5001000", at(3600))
    assert (st["rpo_seconds"], st["rpo_basis"]) == (150.0, "archive_timeout")
    st = status(archiver("000000010000000000000004", at(0)), [], "0/5001000", at(3600), timeout=0)
    assert (st["rpo_seconds"], st["rpo_basis"]) == (3600.0, "since_last_archived")


def test_status_failing_archive_lags_by_the_oldest_ready_file():
    ready = [("000000010000000000000006", at(30)), ("000000010000000000000005", at(10)),
             ("00000001000000000000000A", at(50))]
    st = status(archiver("000000010000000000000004", at(0), failed=7), ready, "0/B000100", at(70))
    assert st["ready_count"] == 3 and st["oldest_ready_wal"] == "000000010000000000000005"
    assert st["lag_segments"] == 6  # 5..A completed, B being written
    assert st["lag_seconds"] == 60.0 and (st["rpo_seconds"], st["rpo_basis"]) == (60.0, "oldest_ready")
    assert st["oldest_ready_time"] == at(10).isoformat()


def test_status_nothing_archived_yet_counts_ready_segments():
    ready = [("000000010000000000000001", at(0)), ("00000002.history", at(1))]
    st = status(archiver(), ready, "0/2000100", at(5))
    assert (st["lag_segments"], st["lag_segments_basis"], st["ready_count"]) == (1, "ready_segments", 2)
    assert st["rpo_seconds"] == 5.0


def test_status_other_timeline_or_backup_file_counts_ready_segments():
    st = status(archiver("00000001000000000000000A"), [], "0/B000100", at(5), timeline=2)
    assert (st["lag_segments"], st["lag_segments_basis"]) == (0, "ready_segments")
    st = status(archiver("000000010000000000000003.00000028.backup", at(0)), [], "0/9000100", at(5))
    assert st["lag_segments_basis"] == "ready_segments"


def test_status_archiving_inactive_has_no_rpo():
    st = status(archiver(), [], "0/2000100", at(5), mode="off")
    assert not st["archiving_active"] and st["rpo_seconds"] is None
    st = status(archiver(), [], "0/2000100", at(5), mode="on", in_recovery=True)
    assert not st["archiving_active"] and st["rpo_basis"] == "archiving_inactive"
    st = status(archiver(), [], "0/2000100", at(5), mode="always", in_recovery=True)
    assert st["archiving_active"] and (st["rpo_seconds"], st["rpo_basis"]) == (150.0, "archive_timeout")


def test_status_lag_never_negative_at_a_segment_boundary():
    st = status(archiver("000000010000000000000004", at(0)), [], "0/5000000", at(1))
    assert st["lag_segments"] == 0 and st["rpo_seconds"] == 0.0


def test_plan_hidden_archive_command_waits_for_the_restart_not_a_reload():
    desired, _notes = wal_server.desired_settings({"state": "absent"})
    files = {"archive_mode": "off", "archive_command": "", "archive_timeout": "0"}
    steps = wal_server.plan(desired, rows(archive_command="(disabled)"), files)
    # '(disabled)' is what archive_command shows while archive_mode is off: read as the '' the files hold
    off = {"archive_mode": "off", "archive_command": "", "archive_timeout": "0s"}
    assert steps == {"changes": [], "before": off, "after": off, "restart": [], "reload": []}
