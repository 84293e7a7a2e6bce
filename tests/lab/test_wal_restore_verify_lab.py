"""A point-in-time restore that may open (the serving region's own primary, every other host a standby) stops
when verification at the target fails: it stays paused, read-only, on its old timeline, and archives nothing. Then
the test puts the primary's own data directory back (the restore kept it aside) so the lab serves as before.

Needs WAL archiving on and a backup taken with it in the serving region's repository: test_wal_lab.py leaves both
before it in the lab stage (tests/lab/conftest.py: LAB_ORDER); archived_backup() checks that, and sets them up when
this file runs alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

from conftest import REPO, playbook
from test_wal_lab import REGIONS, archived_backup, serving_region, switch_and_wait_archived
from test_wal_restore_lab import history_objects, sql

INVENTORY = str(REPO / "inventories" / "lab")

PUT_BACK = """set -e
pg_ctlcluster 15 main stop -m fast >/dev/null 2>&1 || true
cd /var/lib/postgresql/15
kept=$(ls -d main.replaced-* | sort | tail -n 1)
rm -rf main.failed-pitr
mv main main.failed-pitr
mv "$kept" main
rm -rf main.failed-pitr main.immersiverse-dr-restore.json main.restore-progress.json main.recovery-progress.json
printf 'auto\\n' > /etc/postgresql/15/main/start.conf
pg_ctlcluster 15 main start
"""


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what} within {seconds} s")


def test_a_pitr_whose_verification_fails_is_never_promoted():
    serving = serving_region()
    host = f"dr-lab-{serving}-db"
    archived_backup(serving)  # in the lab stage: test_wal_lab.py's newest backup, WAL archived since
    journal = REPO / ".lab" / "verify-journal.jsonl"
    journal.unlink(missing_ok=True)
    env = {**os.environ, "PGPASSFILE": str(REPO / ".lab" / "pgpass"), "PYTHONPATH": str(REPO / "lab")}
    gen = subprocess.Popen([sys.executable, "-m", "drlab.generator", "--journal", str(journal), "--user", "auth_app",
                            "--dbname", "authdb", "--endpoint",
                            f"{serving}=127.0.0.1:{REGIONS[serving] * 10000 + 5432}", "--rate", "100",
                            "--duration", "3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert gen.wait(60) == 0, gen.stderr.read()
    acks = [a for a in (json.loads(line) for line in journal.read_text().splitlines()) if a.get("type") == "ack"]
    assert len(acks) > 100
    target = datetime.fromisoformat(acks[len(acks) // 2]["acked_at"].replace("Z", "+00:00"))
    switch_and_wait_archived(serving)  # the target's segment, in every region's repository
    timeline = sql(serving, "SELECT timeline_id FROM pg_control_checkpoint()", "postgres")
    histories_before = history_objects()
    try:
        # verify_min_timeline=99 cannot hold: verification at the target fails, as a bad restore's would
        run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "pitr.yml"), "-e", f"restore_region={serving}",
                       "-e", f"target_time={target.strftime('%Y-%m-%dT%H:%M:%S.%f+00')}", "-e", "confirm=true",
                       "-e", "verify_min_timeline=99")
        assert run.rc != 0, run.out[-4000:]
        assert "will end paused at the target" not in run.out, "the restore was not allowed to open: proves nothing"
        assert "expected a standby on timeline >= 99" in run.out, run.out[-4000:]
        assert "promote after the target was reached and verified" not in run.out
        # never promoted: paused at the target, read-only, same timeline, nothing archived from it
        assert sql(serving, "SELECT pg_is_in_recovery()", "postgres") == "t"
        assert sql(serving, "SELECT pg_get_wal_replay_pause_state()", "postgres") == "paused"
        assert sql(serving, "SELECT timeline_id FROM pg_control_checkpoint()", "postgres") == timeline
        assert history_objects() == histories_before, "a new timeline reached the repositories"
    finally:
        subprocess.run(["podman", "exec", host, "sh", "-c", PUT_BACK], check=True, capture_output=True, timeout=120)
    wait_for(lambda: sql(serving, "SELECT pg_is_in_recovery()", "postgres") == "f", 60, "the primary serves again")
    for region in REGIONS:
        if region != serving:
            wait_for(lambda r=region: "streaming" in sql(r, "SELECT status FROM pg_stat_wal_receiver", "postgres"),
                     60, f"{region} streams from the primary again")
    assert serving_region() == serving
