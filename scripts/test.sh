#!/usr/bin/env bash
# The whole test suite (make test, and CI through .ci/run). Stages run in this order; each can run alone:
#   scripts/test.sh [all|lint|unit|integration|molecule|lab]
#   lint         ruff, ansible-lint (production profile, offline), antsibull-changelog, ansible-test sanity
#   unit         pytest tests/tools, then tests/unit through ansible-test units
#   integration  pytest -n 2 tests/integration: real PostgreSQL, Kafka (Tansu), Redis, Kubernetes stand-in, started here
#   molecule     molecule test -s replication (two region hosts in podman)
#   lab          scripts/lab.sh up, pytest tests/lab (includes a full drill), the lab's Molecule scenarios (failover,
#                partition, switchover: molecule/<name>/), scripts/lab.sh down, nothing left
# Fails on the first failing stage, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH=$ROOT/.venv/bin:$PATH ANSIBLE_CONFIG=$ROOT/ansible.cfg PYTHONPATH=$ROOT/lab ANSIBLE_NOCOLOR=1
stage=${1:-all}
declare -a done_stages=()

banner() { printf '\n==== %s ====\n' "$*"; }
timed() { local name=$1; shift; local t0=$SECONDS; banner "$name"; "$@"; done_stages+=("$name $((SECONDS - t0))s"); }

lint() {
  ruff check .
  ansible-lint
  # changelogs/: valid fragments and changelog.yaml, and CHANGELOG.rst is what they generate
  antsibull-changelog lint
  antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
  mkdir -p .cache
  antsibull-changelog generate --output .cache/CHANGELOG.rst --output-format rst
  cmp -s .cache/CHANGELOG.rst CHANGELOG.rst \
    || { echo "FAIL: CHANGELOG.rst is not what antsibull-changelog generate makes from changelogs/" >&2; return 1; }
  scripts/ansible-test.sh sanity --venv --python 3.11
}

# tests/unit runs once, through ansible-test units (the collection's layout; the same tests pytest would collect)
unit() {
  pytest tests/tools -q
  scripts/ansible-test.sh units --venv --python 3.11
}

# two workers (pytest-xdist): the tests mostly wait on their servers, and each starts its own on free ports under
# its own temporary directory (444 s in one process in CI before, 173-201 s in two)
integration() {
  pytest tests/integration -q -n 2
}

molecule_stage() {
  scripts/lab.sh image   # the scenario runs the lab image; built here when missing
  molecule test -s replication
}

# The runbook scenarios run on the lab that the lab stage brought up (unmanaged Molecule driver): each one puts the
# lab in its layout first and repairs it after. `molecule reset` forgets the state of a killed earlier run.
LAB_SCENARIOS=(failover partition switchover)
lab_scenarios() {
  local s
  for s in "${LAB_SCENARIOS[@]}"; do
    banner "molecule test -s $s (on the lab)"
    molecule reset -s "$s" >/dev/null 2>&1 || true
    molecule test -s "$s" || return 1
  done
}

lab() {
  scripts/lab.sh up
  local rc=0
  pytest tests/lab -q --durations=0 || rc=$?
  [ $rc -ne 0 ] || lab_scenarios || rc=$?
  scripts/lab.sh down
  left=$(podman ps -a --filter label=io.immersiverse.dr.lab=1 --format '{{.Names}}'; podman network ls --format '{{.Name}}' | grep -xE 'dr-lab(-storage)?' || true)
  if [ -n "$left" ]; then echo "FAIL: lab-down left behind: $left" >&2; return 1; fi
  echo "lab-down left no container or network behind"
  return $rc
}

case $stage in
  lint) timed lint lint ;;
  unit) timed unit unit ;;
  integration) timed integration integration ;;
  molecule) timed molecule molecule_stage ;;
  lab) timed lab lab ;;
  all)
    timed lint lint
    timed unit unit
    timed integration integration
    timed molecule molecule_stage
    timed lab lab
    ;;
  *) echo "usage: $0 [all|lint|unit|integration|molecule|lab]" >&2; exit 2 ;;
esac
banner "passed: ${done_stages[*]}"
