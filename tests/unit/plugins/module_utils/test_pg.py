import json

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import fence as pg_fence


@pytest.mark.parametrize("lsn, value", [
    ("0/0", 0),
    ("0/3000148", 0x3000148),
    ("16/B374D848", 0x16B374D848),
    ("FFFFFFFF/FFFFFFFF", 0xFFFFFFFFFFFFFFFF),
])
def test_lsn_round_trip(lsn, value):
    assert pg_connection.lsn_to_int(lsn) == value
    assert pg_connection.int_to_lsn(value) == lsn


@pytest.mark.parametrize("bad", ["", "16", "16/", "G/1", "1/2/3", "123456789/0"])
def test_lsn_rejects_garbage(bad):
    with pytest.raises(ValueError):
        pg_connection.lsn_to_int(bad)


def test_timeline_of_walfile():
    assert pg_connection.timeline_of_walfile("0000000200000000000000A1") == 2
    assert pg_connection.timeline_of_walfile("0000001A0000000100000000") == 26
    with pytest.raises(ValueError):
        pg_connection.timeline_of_walfile("00000002.history")


def test_connect_kwargs_prefers_socket_and_never_puts_empty_password():
    kw = pg_connection.connect_kwargs({"login_unix_socket": "/run/pg", "login_host": "db1", "login_port": 5433,
                                       "login_user": "postgres", "login_password": "", "login_db": "authdb",
                                       "connect_timeout": 3, "ssl_mode": "require"})
    assert kw["host"] == "/run/pg"
    assert "password" not in kw
    assert "sslmode" not in kw, "sslmode means nothing on a unix socket"
    assert kw["port"] == 5433 and kw["dbname"] == "authdb" and kw["connect_timeout"] == 3


def test_describe_target_never_shows_the_password():
    text = pg_connection.describe_target({"login_host": "db1", "login_user": "u", "login_password": "s3cret-value",
                                          "login_port": 5432, "login_db": "d"})
    assert "s3cret-value" not in text
    assert text == "u@db1:5432/d"


# --- read_fence: the isolate phase's marker and start.conf, read also when PostgreSQL is down ---------------------

START_CONF = """# Automatic startup configuration
#   auto: automatically start the cluster
#   manual: manual startup with pg_ctlcluster/postgresql@.service only
#   disabled: refuse to start cluster
# See pg_createcluster(1) for details. When running from systemd,
# invoke 'systemctl daemon-reload' after editing this file.

   manual   # fenced by immersiverse.dr
auto
"""


def test_read_fence_start_conf_skips_comments_and_blank_lines(tmp_path):
    (tmp_path / "start.conf").write_text(START_CONF, encoding="utf-8")
    assert pg_fence.read_fence(str(tmp_path)) == {"start_conf": "manual", "marker": None, "fenced": False}


@pytest.mark.parametrize("text, word", [("auto\n", "auto"), ("disabled", "disabled"), ("# only comments\n\n", None),
                                        ("", None)])
def test_read_fence_start_conf_words(tmp_path, text, word):
    (tmp_path / "start.conf").write_text(text, encoding="utf-8")
    assert pg_fence.read_fence(str(tmp_path))["start_conf"] == word


def test_read_fence_without_files_is_not_fenced(tmp_path):
    assert pg_fence.read_fence(str(tmp_path)) == {"start_conf": None, "marker": None, "fenced": False}
    assert pg_fence.read_fence(str(tmp_path / "missing")) == {"start_conf": None, "marker": None, "fenced": False}


def test_read_fence_marker_present_is_fenced(tmp_path):
    marker = {"fenced_at": "2026-12-02T03:00:00Z", "by": "isolate", "was": "primary", "timeline": 1,
              "current_lsn": "0/5000000"}
    (tmp_path / "start.conf").write_text("manual\n", encoding="utf-8")
    (tmp_path / pg_fence.FENCE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
    assert pg_fence.FENCE_MARKER == "immersiverse-dr-fence.json"
    assert pg_fence.read_fence(str(tmp_path)) == {"start_conf": "manual", "marker": marker, "fenced": True}


def test_read_fence_marker_without_start_conf_is_still_fenced(tmp_path):
    (tmp_path / pg_fence.FENCE_MARKER).write_text("{}", encoding="utf-8")
    assert pg_fence.read_fence(str(tmp_path)) == {"start_conf": None, "marker": {}, "fenced": True}


@pytest.mark.parametrize("content", ["{not json", "", "\x00\x01"])
def test_read_fence_malformed_marker_is_fenced_and_unreadable(tmp_path, content):
    (tmp_path / pg_fence.FENCE_MARKER).write_text(content, encoding="utf-8")
    fence = pg_fence.read_fence(str(tmp_path))
    assert fence["fenced"] is True, "a marker that cannot be parsed still says: do not serve"
    assert set(fence["marker"]) == {"unreadable"} and fence["marker"]["unreadable"]


@pytest.mark.parametrize("content", ["[1, 2]", "\"fenced\"", "null", "7"])
def test_read_fence_marker_that_is_no_object_is_unreadable(tmp_path, content):
    (tmp_path / pg_fence.FENCE_MARKER).write_text(content, encoding="utf-8")
    assert pg_fence.read_fence(str(tmp_path))["marker"] == {"unreadable": "not a JSON object"}
    assert pg_fence.read_fence(str(tmp_path))["fenced"] is True


def test_read_fence_marker_not_a_file_is_fenced_and_unreadable(tmp_path):
    (tmp_path / pg_fence.FENCE_MARKER).mkdir()
    fence = pg_fence.read_fence(str(tmp_path))
    assert fence["fenced"] is True and "unreadable" in fence["marker"]


def test_read_fence_invalid_utf8_marker_is_unreadable(tmp_path):
    (tmp_path / pg_fence.FENCE_MARKER).write_bytes(b"\xff\xfe{")
    fence = pg_fence.read_fence(str(tmp_path))
    assert fence["fenced"] is True and "unreadable" in fence["marker"]


# --- set_fence: the isolate phase's fence and its removal ---------------------------------------------------------

def test_set_fence_writes_start_conf_and_marker_once_then_changes_nothing(tmp_path):
    (tmp_path / "start.conf").write_text("# Automatic startup\nauto\n")
    first = pg_fence.set_fence(str(tmp_path), True, {"reason": "failover to secondary"})
    assert first["changed"] and first["actions"] == ["start.conf: auto -> disabled", "fence marker written"]
    assert first["after"] == {"start_conf": "disabled", "marker": {"reason": "failover to secondary"}, "fenced": True}
    again = pg_fence.set_fence(str(tmp_path), True, {"reason": "a later run"})
    assert not again["changed"] and again["after"]["marker"] == {"reason": "failover to secondary"}


def test_set_fence_keeps_a_disabled_start_conf_written_by_someone_else(tmp_path):
    (tmp_path / "start.conf").write_text("# fenced by scripts/lab-fence.sh\ndisabled\n")
    res = pg_fence.set_fence(str(tmp_path), True, {"reason": "x"})
    assert res["actions"] == ["fence marker written"]
    assert (tmp_path / "start.conf").read_text().startswith("# fenced by scripts/lab-fence.sh")


def test_set_fence_turns_manual_into_disabled_since_manual_still_lets_pg_ctlcluster_start_it(tmp_path):
    (tmp_path / "start.conf").write_text("manual\n")
    res = pg_fence.set_fence(str(tmp_path), True, {"reason": "x"})
    assert res["actions"][0] == "start.conf: manual -> disabled"
    assert pg_fence.read_fence(str(tmp_path))["start_conf"] == "disabled"


def test_unfence_restores_auto_and_removes_the_marker(tmp_path):
    pg_fence.set_fence(str(tmp_path), True, {"reason": "x"})
    res = pg_fence.set_fence(str(tmp_path), False)
    assert res["changed"] and res["after"] == {"start_conf": "auto", "marker": None, "fenced": False}
    assert not (tmp_path / pg_fence.FENCE_MARKER).exists()
    assert not pg_fence.set_fence(str(tmp_path), False)["changed"]


def test_set_fence_check_mode_writes_nothing(tmp_path):
    (tmp_path / "start.conf").write_text("auto\n")
    res = pg_fence.set_fence(str(tmp_path), True, {"reason": "x"}, check_mode=True)
    assert res["changed"] and res["after"]["fenced"] is True
    assert (tmp_path / "start.conf").read_text() == "auto\n" and not (tmp_path / pg_fence.FENCE_MARKER).exists()


def test_set_fence_refuses_a_missing_directory(tmp_path):
    with pytest.raises(pg_connection.PgError, match="is not a directory"):
        pg_fence.set_fence(str(tmp_path / "nope"), True)


@pytest.mark.parametrize("conninfo, upstream", [
    ("host=dr-lab-primary-db port=5432 user=replicator passfile=/var/lib/postgresql/.pgpass application_name=s",
     {"host": "dr-lab-primary-db", "port": 5432}),
    ("user=replicator host='10.0.1.5' port = 6432", {"host": "10.0.1.5", "port": 6432}),
    (r"host='a b\'c' password=secret", {"host": "a b'c", "port": 5432}),
    ("hostaddr=10.0.0.9 host=db-a", {"host": "db-a", "port": 5432}),
    ("", None),
    (None, None),
    ("port=5432 user=x", None),
    ("password='p host=s3cr3t' host=db-a", {"host": "db-a", "port": 5432}),
    ("postgresql://replicator:s3cr3t@db-b:6432/postgres?application_name=x", {"host": "db-b", "port": 6432}),
    ("host=db-a,db-b port=5432", None),
    ("host='unterminated", None),
])
def test_upstream_of_reads_host_and_port_only(conninfo, upstream):
    assert pg_connection.upstream_of(conninfo) == upstream
    assert "secret" not in repr(pg_connection.upstream_of(conninfo)) and "s3cr3t" not in repr(
        pg_connection.upstream_of(conninfo))


@pytest.mark.parametrize("conninfo", ["host", "=x", "host=db-a port", "postgresql://a:1,b:2/x", "postgresql://[::1"])
def test_upstream_of_a_conninfo_libpq_would_not_take_is_none(conninfo):
    assert pg_connection.upstream_of(conninfo) is None
