"""The backup operations the modules and the scheduled command share: the rules that do not need a server."""

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local

CONN = {"login_host": "db.example", "login_port": 5432, "login_user": "backup", "login_db": "postgres"}


@pytest.fixture
def standby(monkeypatch):
    monkeypatch.setattr(backup_operations, "cluster_identity",
                        lambda conn: {"in_recovery": True, "system_identifier": "7", "timeline": 2})


@pytest.mark.parametrize("operation", ["full", "logical"])
def test_a_standby_is_skipped_by_the_timers_refused_by_the_module_and_nothing_is_written(standby, tmp_path,
                                                                                         operation):
    repo = repo_local.LocalRepository(str(tmp_path / "repo"), name="home")

    def run(on_standby):
        if operation == "full":
            return backup_operations.full_backup(repo, CONN, "/no/such/bin", on_standby=on_standby)
        return backup_operations.logical_backup(repo, CONN, "/no/such/bin", ["auth"], on_standby=on_standby)

    skipped = run("skip")
    assert not skipped["changed"] and "is a standby; backups run on the primary" in skipped["skipped"]
    with pytest.raises(backup_catalog.BackupError, match="is a standby and allow_standby is false"):
        run("fail")
    with pytest.raises(ValueError, match="on_standby must be one of"):
        run("maybe")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*.json"))


def test_a_label_with_a_path_trick_is_refused_before_the_server_is_asked(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(backup_operations, "cluster_identity", asked.append)
    repo = repo_local.LocalRepository(str(tmp_path / "repo"), name="home")
    with pytest.raises(ValueError):
        backup_operations.full_backup(repo, CONN, "/bin", label="../../etc")
    assert asked == []
