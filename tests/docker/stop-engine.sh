#!/usr/bin/env bash
# Stop an engine started by start-engine.sh DIR, and remove DIR.
set -uo pipefail
dir=${1:?usage: stop-engine.sh DIR}
[ -d "$dir" ] || exit 0
dir=$(cd "$dir" && pwd)
pid=$(cat "$dir/dockerd.launched" 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  # dockerd stops its containers and its containerd on SIGTERM.
  docker -H "unix://$dir/docker.sock" ps -aq 2>/dev/null \
    | xargs -r docker -H "unix://$dir/docker.sock" rm -f >/dev/null 2>&1 || true
  kill -TERM "$pid"
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
fi
# Overlay and shm mounts a killed engine may have left, deepest first; then the state.
grep -o " $dir/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
rm -rf "$dir"
