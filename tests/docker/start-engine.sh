#!/usr/bin/env bash
# Start a private Docker engine (dockerd) with all its state under DIR, for the tests.
#
#   eval "$(tests/docker/start-engine.sh DIR)"    # prints: export DOCKER_HOST=unix://DIR/docker.sock
#   ...
#   tests/docker/stop-engine.sh DIR
#
# It needs root and dockerd (Debian: apt-get install docker.io). Its own socket, data root,
# exec root and pid file keep it apart from any engine the host runs. --bridge=none and
# --iptables=false: it creates no docker0 bridge and touches no iptables rules, so several
# such engines (CI and a developer's) can run on one host; the worker needs no network
# (ipc:// sockets and /dev/shm), and user-defined networks still work.
# DIR should be short: unix socket paths are limited to 107 bytes.
set -euo pipefail
dir=${1:?usage: start-engine.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock="$dir/docker.sock"
if ! command -v dockerd >/dev/null; then
  echo "start-engine.sh: dockerd not found (Debian: apt-get install docker.io)" >&2
  exit 1
fi
dockerd --host "unix://$sock" --data-root "$dir/data" --exec-root "$dir/exec" \
  --pidfile "$dir/dockerd.pid" --bridge=none --iptables=false --ip-masq=false \
  >"$dir/dockerd.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$dir/dockerd.launched"
for _ in $(seq 1 300); do  # ready in well under a second here; allow 30 s
  if docker -H "unix://$sock" version >/dev/null 2>&1; then
    echo "export DOCKER_HOST=unix://$sock"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
echo "start-engine.sh: dockerd did not start; its log ($dir/dockerd.log) ends:" >&2
tail -n 30 "$dir/dockerd.log" >&2 || true
kill "$pid" 2>/dev/null || true
exit 1
