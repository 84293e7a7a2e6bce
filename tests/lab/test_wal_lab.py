"""WAL archiving on the running lab: site.yml sets it up; under the workload generator, every segment between two
backups reaches every region's repository, each one verified by its checksums."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import botocore.exceptions
import psycopg2
from conftest import REPO, assert_no_secret, playbook

from drlab import s3 as lab_s3

sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects  # noqa: E402

INVENTORY = str(REPO / "inventories" / "lab")
REGIONS = {"primary": 1, "secondary": 2, "tertiary": 3}


def s3(region):
    return lab_s3.client(region)


def serving_region() -> str:
    for region, idx in REGIONS.items():
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=idx * 10000 + 5432, dbname="authdb", user="auth_app",
                                    passfile=str(REPO / ".lab" / "pgpass"), connect_timeout=3)
        except psycopg2.OperationalError:
            continue
        try:
            cur = conn.cursor()
            cur.execute("SELECT pg_is_in_recovery()")
            if not cur.fetchone()[0]:
                return region
        finally:
            conn.close()
    raise AssertionError("no region serves")


def superuser_sql(region: str, sql: str) -> str:
    out = subprocess.run(["podman", "exec", "-u", "postgres", f"dr-lab-{region}-db", "psql", "-AtXc", sql],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def newest_backup(region: str) -> dict:
    client = s3(region)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=f"immersiverse-dr-{region}",
                                                     Prefix="auth-db/backup/").get("Contents", [])
            if o["Key"].endswith("/backup.json")]
    return json.loads(client.get_object(Bucket=f"immersiverse-dr-{region}", Key=max(keys))["Body"].read())


def archived_in(region: str, name: str) -> bool:
    """WAL file ``name`` is in ``region``'s repository."""
    try:
        s3(region).head_object(Bucket=f"immersiverse-dr-{region}", Key="auth-db/" + wal_naming.wal_key(name))
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def archived_everywhere(name: str, timeout: float = 60) -> None:
    """Until WAL file ``name`` is in every region's repository (the archive_command stores it in every region; one
    that failed is owed it and backfilled)."""
    deadline = time.monotonic() + timeout
    missing = list(REGIONS)
    while missing := [r for r in missing if not archived_in(r, name)]:
        assert time.monotonic() < deadline, f"{name} is not in the repository of {missing} after {timeout:.0f} s"
        time.sleep(0.5)


def switch_and_wait_archived(region: str) -> str:
    """pg_switch_wal() on the serving ``region``'s primary; the segment it completed, once every region has it."""
    name = superuser_sql(region, "SELECT pg_walfile_name(pg_switch_wal())")
    archived_everywhere(name)
    return name


def archived_backup(region: str) -> dict:
    """The newest backup in ``region``'s repository, taken while WAL archiving was on (its first segment is archived
    there), with the engine on every host: what a restore from that repository to a time from now on needs.
    test_wal_lab.py leaves exactly that (tests/lab/conftest.py: LAB_ORDER), so in the lab stage this only checks;
    a file run alone gets it here (site.yml, then a backup)."""
    serving = serving_region()
    engine = all(subprocess.run(["podman", "exec", f"dr-lab-{r}-db", "test", "-x",
                                 "/usr/local/bin/immersiverse-dr-wal"], check=False, timeout=60).returncode == 0
                 for r in REGIONS)
    if not engine or superuser_sql(serving, "SHOW archive_mode") != "on" or \
            "immersiverse-dr-wal push" not in superuser_sql(serving, "SHOW archive_command"):
        site = playbook("-i", INVENTORY, str(REPO / "playbooks" / "site.yml"))
        assert site.rc == 0, site.out[-3000:]
    try:
        record = newest_backup(region)
    except ValueError:  # no backup at all
        record = None
    if record is None or not archived_in(region, record["start_wal"]):
        backup = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"))
        assert backup.rc == 0, backup.out[-3000:]
        record = newest_backup(region)
        switch_and_wait_archived(serving)
        archived_everywhere(record["stop_wal"])
    return record


def test_site_archives_every_segment_between_two_backups_into_every_region(tmp_path):
    site = playbook("-i", INVENTORY, str(REPO / "playbooks" / "site.yml"), "-e", "wal_archive_rpo_seconds=60", "-vvv")
    assert site.rc == 0, site.out[-4000:]
    assert_no_secret(site)
    # the engine on each host is exactly the collection's module_utils, sub-packages included: every file and
    # directory, no controller __pycache__, nothing stale
    local = REPO / "plugins" / "module_utils"
    want = sorted(str(p.relative_to(local)) for p in local.rglob("*")
                  if "__pycache__" not in p.parts and p.suffix != ".pyc")
    for region in REGIONS:
        got = subprocess.run(["podman", "exec", f"dr-lab-{region}-db", "find",
                              "/usr/local/lib/immersiverse-dr/ansible_collections/immersiverse/dr/plugins/module_utils",
                              "-mindepth", "1", "-printf", "%P\\n"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.split()
        assert sorted(got) == want, (region, sorted(set(got) ^ set(want)))
    again = playbook("-i", INVENTORY, str(REPO / "playbooks" / "site.yml"), "-e", "wal_archive_rpo_seconds=60")
    assert again.rc == 0 and not again.changed(), again.out[-3000:]

    region = serving_region()
    assert superuser_sql(region, "SHOW archive_mode") == "on"
    first = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"))
    assert first.rc == 0, first.out[-3000:]
    backup1 = newest_backup(region)

    journal = tmp_path / "journal.jsonl"
    env = {**os.environ, "PGPASSFILE": str(REPO / ".lab" / "pgpass"), "PYTHONPATH": str(REPO / "lab")}
    gen = subprocess.Popen([sys.executable, "-m", "drlab.generator", "--journal", str(journal), "--user", "auth_app",
                            "--dbname", "authdb", "--endpoint", f"{region}=127.0.0.1:{REGIONS[region] * 10000 + 5432}",
                            "--rate", "200", "--duration", "8"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    since = superuser_sql(region, "SELECT pg_current_wal_insert_lsn()")
    for _switch in range(4):  # four segments, each completed once the generator has written into it
        deadline = time.monotonic() + 30
        while superuser_sql(region, f"SELECT pg_current_wal_insert_lsn() > '{since}'::pg_lsn") != "t":
            assert gen.poll() is None, gen.stderr.read()
            assert time.monotonic() < deadline, f"no WAL written after {since} in 30 s"
            time.sleep(0.1)
        superuser_sql(region, "SELECT pg_switch_wal()")
        since = superuser_sql(region, "SELECT pg_current_wal_insert_lsn()")  # the new segment, nothing in it yet
    assert gen.wait(60) == 0, gen.stderr.read()

    second = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"))
    assert second.rc == 0, second.out[-3000:]
    backup2 = newest_backup(region)
    assert backup2["id"] != backup1["id"]
    superuser_sql(region, "SELECT pg_switch_wal()")

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        last = superuser_sql(region, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if last >= backup2["stop_wal"]:
            break
        time.sleep(1)
    assert last >= backup2["stop_wal"], f"archiving stalled at {last!r}"
    assert int(superuser_sql(region, "SELECT failed_count FROM pg_stat_archiver")) == 0

    tl, lo = wal_naming.parse_segment(backup1["start_wal"])
    hi = wal_naming.parse_segment(backup2["stop_wal"])[1]
    assert hi - lo >= 4, "the generator and the switches made too few segments to prove anything"
    for target in REGIONS:
        client = s3(target)
        for segno in range(lo, hi + 1):
            name = wal_naming.segment_name(tl, segno)
            body = client.get_object(Bucket=f"immersiverse-dr-{target}",
                                     Key="auth-db/" + wal_naming.wal_key(name))["Body"].read()
            assert len(wal_objects.unpack(body, name)) == 16 * 1024 * 1024  # checksums and size verified
