# immersiverse.dr — the two commands first:
#   make drill   set up what is missing, bring the three-region lab up, run a DR drill, print RPO and RTO
#   make test    set up what is missing and run the whole test suite (what CI runs)
SHELL := /bin/bash
VENV := .venv
ANSIBLE_PLAYBOOK := $(VENV)/bin/ansible-playbook
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONPATH := $(CURDIR)/lab

.PHONY: drill test setup lab-up lab-down lab-status lint unit integration lab-tests molecule sanity bench bench-lab bench-drill bench-failover bench-backup \
	bench-wal bench-restore clean

drill: lab-up
	$(ANSIBLE_PLAYBOOK) playbooks/drill.yml $(DRILL_ARGS)

test: setup
	scripts/test.sh

setup:
	scripts/setup.sh

lab-up: setup
	scripts/lab.sh up

lab-down:
	scripts/lab.sh down

lab-status:
	scripts/lab.sh status

lint: setup
	scripts/test.sh lint

unit: setup
	scripts/test.sh unit

integration: setup
	scripts/test.sh integration

lab-tests: setup
	scripts/test.sh lab

molecule: setup
	scripts/test.sh molecule

sanity: setup
	scripts/ansible-test.sh sanity --venv --python 3.11

# every benchmark (lab, drill, backup, WAL, then restore); results in bench/results/
bench: setup
	scripts/bench.sh

# one Ansible task over the podman connection vs SSH under write load, and a killed host's detection (~4 min)
bench-lab: setup
	scripts/bench.sh lab $(BENCH_ARGS)

# three drills in a row: median RPO, RTO and its phases (~3 min)
bench-drill: setup
	scripts/bench.sh drill $(BENCH_ARGS)

# failover.yml's RTO (fault -> first acknowledged write) and switchover.yml's write unavailability, 3 runs each (~8 min;
# BENCH_ARGS="--baseline <rev>" alternates the failovers with those of <rev>, side by side, ~12 min)
bench-failover: setup
	scripts/bench.sh failover $(BENCH_ARGS)

# the base-backup benchmark alone (ours vs pgBackRest, ~5 min; BENCH_ARGS="--rounds 3" for a shorter run)
bench-backup: setup
	scripts/bench.sh backup $(BENCH_ARGS)

# the WAL push/fetch benchmark alone (ours vs pgBackRest vs cp, ~6 min; BENCH_ARGS="--rounds 1" for a shorter run)
bench-wal: setup
	scripts/bench.sh wal $(BENCH_ARGS)

# the restore and PITR benchmark alone (ours vs pgBackRest restore and archive-get, ~10 min;
# BENCH_ARGS="--rounds 1 --pitr-rounds 1" for a shorter run)
bench-restore: setup
	scripts/bench.sh restore $(BENCH_ARGS)

clean: lab-down
	rm -rf .cache/lab .collections
