#!/usr/bin/env bash
# The lab's fence ("STONITH") for a database host container that cannot be reached: make sure it is not running,
# mark its PostgreSQL cluster start.conf "disabled" and leave the fence marker (immersiverse-dr-fence.json) the rejoin
# reads, so that when the container is started again (the host "comes back") PostgreSQL stays down until it is
# rejoined as a standby. Out of band: podman, never the host's own SSH. Used as isolate_fence_command in
# inventories/lab. Usage: scripts/lab-fence.sh CONTAINER   (LAB_PG_VERSION, default 15)
#
# It sits on the failover's hot path (the promotion waits for it), so it makes few podman calls and reaches the files
# through `podman mount` (a tenth of what a `podman cp` costs on a stopped container). The marks go in first and the
# stop comes after them, whatever the container looked like: one started in between is stopped again, and stays down.
# Rootful podman (the lab's); rootless would need `podman unshare` around the mount.
set -euo pipefail
name=${1:?usage: lab-fence.sh CONTAINER}
confdir=/etc/postgresql/${LAB_PG_VERSION:-15}/main
case $name in dr-lab-*-db) ;; *) echo "lab-fence: refusing to fence $name (not a lab database host)" >&2; exit 2 ;; esac
state=$(podman container inspect --format '{{.State.Status}}' "$name" 2>/dev/null) \
  || { echo "lab-fence: no container $name" >&2; exit 1; }
case $state in exited|stopped|created|configured) running=false ;; *) running=true ;; esac  # paused counts as up
# Whatever fails from here on, the container is stopped before the script gives up: not marked is bad, running is
# worse.
# halt: stopped for good, whatever its state (podman stop refuses a paused container; podman kill takes it).
halt() {
  # podman stop exits 0 only once the container is stopped (or already was): no second look needed then
  podman stop -t 1 "$name" >/dev/null 2>&1 && return 0
  podman kill "$name" >/dev/null 2>&1 || true
  case $(podman container inspect --format '{{.State.Status}}' "$name" 2>/dev/null) in
    exited|stopped|created|configured) return 0 ;;
    *) return 1 ;;
  esac
}
stop_and_fail() { halt || true; echo "lab-fence: $name: $1" >&2; exit 1; }
root=$(podman mount "$name") && [ -n "$root" ] && [ -d "$root" ] || stop_and_fail "podman mount failed: stopped, not marked"
# unmounted in the background: the fence is done when the marker is synced and the container is down
trap '(podman umount "$name" >/dev/null 2>&1 &) || true' EXIT
dir=$root$confdir
# the marks must land in the container's own files, not through a link out of it
case $(realpath -e "$dir" 2>/dev/null) in "$root"/*) ;; *) stop_and_fail "no $confdir of its own: stopped, not marked" ;; esac
if [ "$running" != true ] && [ -f "$dir/immersiverse-dr-fence.json" ] && grep -qx disabled "$dir/start.conf" 2>/dev/null
then
  halt || stop_and_fail "would not stop"
  echo "already fenced $name (down; start.conf disabled; marker kept)"
  exit 0
fi
# disabled, not manual: pg_ctlcluster (and systemd) refuse to start a disabled cluster. Each file is written beside
# and renamed into place, then synced: a half-written start.conf would let the host start.
printf '# fenced by scripts/lab-fence.sh: stays down until rejoined as a standby\ndisabled\n' > "$dir/.start.conf.fence"
printf '{"fenced_at": "%s", "host": "%s", "reason": "out-of-band fence (scripts/lab-fence.sh, podman stop)", "by": "lab-fence"}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" > "$dir/.immersiverse-dr-fence.json.fence"
mv -f "$dir/.immersiverse-dr-fence.json.fence" "$dir/immersiverse-dr-fence.json"
mv -f "$dir/.start.conf.fence" "$dir/start.conf"
sync "$dir/start.conf" "$dir/immersiverse-dr-fence.json" "$dir"
halt || stop_and_fail "marked, but it would not stop: it is NOT fenced"
if [ "$running" = true ]; then echo "fenced $name (stopped; start.conf disabled)"; else echo "fenced $name (was down; start.conf disabled)"; fi
