import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils import _pg


@pytest.mark.parametrize("lsn, value", [
    ("0/0", 0),
    ("0/3000148", 0x3000148),
    ("16/B374D848", 0x16B374D848),
    ("FFFFFFFF/FFFFFFFF", 0xFFFFFFFFFFFFFFFF),
])
def test_lsn_round_trip(lsn, value):
    assert _pg.lsn_to_int(lsn) == value
    assert _pg.int_to_lsn(value) == lsn


@pytest.mark.parametrize("bad", ["", "16", "16/", "G/1", "1/2/3", "123456789/0"])
def test_lsn_rejects_garbage(bad):
    with pytest.raises(ValueError):
        _pg.lsn_to_int(bad)


def test_timeline_of_walfile():
    assert _pg.timeline_of_walfile("0000000200000000000000A1") == 2
    assert _pg.timeline_of_walfile("0000001A0000000100000000") == 26
    with pytest.raises(ValueError):
        _pg.timeline_of_walfile("00000002.history")


def test_connect_kwargs_prefers_socket_and_never_puts_empty_password():
    kw = _pg.connect_kwargs({"login_unix_socket": "/run/pg", "login_host": "db1", "login_port": 5433,
                             "login_user": "postgres", "login_password": "", "login_db": "authdb",
                             "connect_timeout": 3, "ssl_mode": "require"})
    assert kw["host"] == "/run/pg"
    assert "password" not in kw
    assert "sslmode" not in kw, "sslmode means nothing on a unix socket"
    assert kw["port"] == 5433 and kw["dbname"] == "authdb" and kw["connect_timeout"] == 3


def test_describe_target_never_shows_the_password():
    text = _pg.describe_target({"login_host": "db1", "login_user": "u", "login_password": "s3cret-value",
                                "login_port": 5432, "login_db": "d"})
    assert "s3cret-value" not in text
    assert text == "u@db1:5432/d"
