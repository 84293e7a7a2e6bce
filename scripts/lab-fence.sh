#!/usr/bin/env bash
# The lab's fence ("STONITH") for a database host container that cannot be reached: make sure it is not running,
# mark its PostgreSQL cluster start.conf "disabled" and leave the fence marker (immersiverse-dr-fence.json) the rejoin
# reads, so that when the container is started again (the host "comes back") PostgreSQL stays down until it is
# rejoined as a standby. Out of band: podman, never the host's own SSH. Used as isolate_fence_command in
# inventories/lab. Usage: scripts/lab-fence.sh CONTAINER   (LAB_PG_VERSION, default 15)
set -euo pipefail
name=${1:?usage: lab-fence.sh CONTAINER}
confdir=/etc/postgresql/${LAB_PG_VERSION:-15}/main
case $name in dr-lab-*-db) ;; *) echo "lab-fence: refusing to fence $name (not a lab database host)" >&2; exit 2 ;; esac
podman container exists "$name" || { echo "lab-fence: no container $name" >&2; exit 1; }
running=$(podman container inspect --format '{{.State.Running}}' "$name")
[ "$running" = true ] && podman stop -t 1 "$name" >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# A stopped container's files are read and written with podman cp.
if [ "$running" != true ] && podman cp "$name:$confdir/immersiverse-dr-fence.json" "$tmp/old" 2>/dev/null \
   && podman cp "$name:$confdir/start.conf" "$tmp/start" 2>/dev/null && grep -qx disabled "$tmp/start"; then
  echo "already fenced $name (down; start.conf disabled; marker kept)"
  exit 0
fi
# disabled, not manual: pg_ctlcluster (and systemd) refuse to start a disabled cluster
printf '# fenced by scripts/lab-fence.sh: stays down until rejoined as a standby\ndisabled\n' > "$tmp/start.conf"
printf '{"fenced_at": "%s", "host": "%s", "reason": "out-of-band fence (scripts/lab-fence.sh, podman stop)", "by": "lab-fence"}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" > "$tmp/immersiverse-dr-fence.json"
podman cp "$tmp/start.conf" "$name:$confdir/start.conf"
podman cp "$tmp/immersiverse-dr-fence.json" "$name:$confdir/immersiverse-dr-fence.json"
if [ "$running" = true ]; then echo "fenced $name (stopped; start.conf disabled)"; else echo "fenced $name (was down; start.conf disabled)"; fi
