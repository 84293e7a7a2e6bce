#!/usr/bin/env bash
# The lab's fence ("STONITH") for a database host container that cannot be reached: make sure it is not running,
# and mark its PostgreSQL cluster start.conf "manual" so that when the container is started again (the host
# "comes back") PostgreSQL stays down until the standby role rebuilds it. Used as isolate_fence_command in
# inventories/lab. Usage: scripts/lab-fence.sh CONTAINER
set -euo pipefail
name=${1:?usage: lab-fence.sh CONTAINER}
case $name in dr-lab-*-db) ;; *) echo "lab-fence: refusing to fence $name (not a lab database host)" >&2; exit 2 ;; esac
podman container exists "$name" || { echo "lab-fence: no container $name" >&2; exit 1; }
running=$(podman container inspect --format '{{.State.Running}}' "$name")
[ "$running" = true ] && podman stop -t 1 "$name" >/dev/null
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
printf '# fenced by scripts/lab-fence.sh: stays down until rebuilt as a standby\nmanual\n' > "$tmp"
podman cp "$tmp" "$name:/etc/postgresql/15/main/start.conf"
if [ "$running" = true ]; then echo "fenced $name (stopped; start.conf manual)"; else echo "fenced $name (was down; start.conf manual)"; fi
