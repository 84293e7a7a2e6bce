#!/usr/bin/env bash
# One idempotent step that makes this machine ready for the lab and the tests:
#   - Debian packages (podman, runc, debootstrap, PostgreSQL 15 tools, redis, pgBackRest, lz4, zstd)
#   - podman configured for this kind of machine (runc runtime, lowered ulimits: crun fails here)
#   - the pinned virtualenv at .venv/ (ansible 12 / ansible-core 2.19 on python3.11, test and lab tools)
#   - .collections/, which makes this checkout importable as the collection immersiverse.dr
# Re-running it only does what is missing. It never prompts (CI runs it with no stdin).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------------------------------------------
# python3-*: the system Python that runs the WAL archive/restore commands as the postgres user in tests, exactly as
# on a database host (the venv lives under root's home, which postgres cannot read).
APT_PACKAGES=(podman runc debootstrap uidmap postgresql-15 postgresql-client-15 redis-server redis-tools pgbackrest
  lz4 zstd make git rsync ca-certificates openssh-client python3-boto3 python3-lz4 python3-crc32c python3-zstandard python3-psycopg2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "setup: missing Debian packages (${missing[*]}); run as root or install them" >&2; exit 1; }
  # The host's PostgreSQL is only a toolbox for tests (they start their own servers): no 'main' cluster on install.
  if ! dpkg-query -W postgresql-common >/dev/null 2>&1; then
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/00-immersiverse-dr.conf
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
fi

# --- podman for this machine ---------------------------------------------------------------------------------------
# crun cannot set rlimits here; runc with lowered default ulimits works (see docs/lab.md).
CONF=/etc/containers/containers.conf
want_conf='# written by immersiverse.dr scripts/setup.sh: crun fails on this machine kind
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"'
if [ ! -f "$CONF" ] || ! grep -q 'runtime = "runc"' "$CONF" || ! grep -q 'default_ulimits' "$CONF"; then
  if [ -f "$CONF" ] && ! grep -q 'immersiverse.dr' "$CONF"; then cp "$CONF" "$CONF.bak.$(date +%s)"; fi
  log "writing $CONF (runc, lowered ulimits)"
  mkdir -p /etc/containers
  printf '%s\n' "$want_conf" > "$CONF"
fi

# --- virtualenv ------------------------------------------------------------------------------------------------------
PY=${PYTHON:-python3}
REQ=requirements/dev.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "virtualenv .venv from $REQ (first time ~2 min)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade 'pip>=24' 2>&1 | grep -v 'is ignored' || true
  .venv/bin/python -m pip install -q -r "$REQ" 2>&1 | grep -v 'is ignored' || true
  .venv/bin/python -c 'import ansible, psycopg2, boto3, redis, kafka, kubernetes, moto, kmock, molecule, pytest' \
    || { echo "setup: the virtualenv is incomplete; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# --- the checkout as an installed collection ---------------------------------------------------------------------------
# ansible finds immersiverse.dr through ansible.cfg's collections_path = ./.collections
mkdir -p .collections/ansible_collections/immersiverse
ln -sfn "$ROOT" .collections/ansible_collections/immersiverse/dr

# sed reads all of ansible's output (head -1 closed the pipe early: ansible printed a Broken pipe traceback)
log "ready: $(.venv/bin/ansible --version | sed -n 1p), podman $(podman --version | awk '{print $3}')"
