#!/usr/bin/env bash
# `make images`: Inferoxy's images, built with nothing from a public image registry.
#
#   images/build.sh [PYTHON]       # PYTHON: the interpreter whose pip fetches wheels
#
# 1. inferoxy/base       Debian bookworm (python3 3.11, python3-venv) made by mmdebstrap from
#                        the machine's apt sources, then `docker import`ed. Kept when present
#                        (REBUILD_BASE=1 makes it again).
# 2. a wheelhouse        `pip wheel` on this host, with this machine's pip configuration
#                        (index, mirror, constraints), into build/wheels/; served on loopback
#                        for the builds, which run with `--network host` and
#                        `pip install --no-index --find-links http://127.0.0.1:PORT/`.
# 3. inferoxy/gateway    Dockerfile                           FROM inferoxy/base
#    inferoxy/model-base worker/Dockerfile                    FROM inferoxy/base
#    inferoxy/example-face   examples/images/face/Dockerfile  FROM inferoxy/model-base
#    inferoxy/example-legacy examples/images/legacy/Dockerfile FROM inferoxy/model-base
#
# Each is tagged :<version> (pyproject.toml) and :latest. It needs root (mmdebstrap, docker),
# mmdebstrap and docker.io; the engine is $DOCKER_HOST's (or the local socket).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
source_url=$(git remote get-url origin 2>/dev/null || true)  # the labels: where, which commit
revision=$(git describe --always --dirty 2>/dev/null || echo unknown)
wheels=build/wheels
started=$(date +%s)

say() { printf '[images %3ds] %s\n' "$(($(date +%s) - started))" "$*" >&2; }

for tool in docker mmdebstrap; do
  command -v "$tool" >/dev/null || {
    echo "images/build.sh: $tool not found (Debian: apt-get install docker.io mmdebstrap)" >&2
    exit 1; }
done
docker version >/dev/null || {
  echo "images/build.sh: no Docker engine answers at ${DOCKER_HOST:-the local socket}" >&2
  exit 1; }

# 1. The base image. Merged /usr by mmdebstrap's hook (apt's usrmerge would pull in perl);
# no documentation, manual pages or translations.
if [ -n "${REBUILD_BASE:-}" ] || ! docker image inspect "inferoxy/base:$version" >/dev/null 2>&1; then
  say "inferoxy/base: mmdebstrap bookworm"
  tarball=$(mktemp /tmp/inferoxy-base.XXXXXX.tar)
  trap 'rm -f "$tarball"' EXIT
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$tarball"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.title=inferoxy/base org.opencontainers.image.version=$version org.opencontainers.image.source=\"$source_url\" org.opencontainers.image.revision=$revision org.opencontainers.image.description=\"Debian bookworm with python3 (mmdebstrap)\"" \
    "$tarball" "inferoxy/base:$version" >/dev/null
  rm -f "$tarball"
  docker tag "inferoxy/base:$version" inferoxy/base:latest
fi

# 2. The wheelhouse: every wheel the images install, for this host's Python 3.11 on Linux
# (the base's python3 is 3.11 too). setuptools and wheel build Inferoxy's own package;
# async-timeout is what redis needs on Python < 3.11.3 (Debian's 3.11.2), which a newer
# host's resolver leaves out.
# The wheels fit the images because this host is like them: Python 3.11 and a glibc no newer
# than bookworm's 2.36 (a Debian bookworm host, as CI's, is both).
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "images/build.sh: $python is not Python 3.11, the images' Python: its wheels may not fit" >&2
  exit 1; }
say "wheels: pip wheel into $wheels"
mkdir -p "$wheels"
"$python" -m pip wheel --quiet --wheel-dir "$wheels" . "setuptools>=68" wheel \
  "opencv-python-headless>=4.8,<5" "async-timeout>=4.0.3"
rm -f "$wheels"/inferoxy-*.whl  # the images build it from the source they copy
rm -rf build/lib build/bdist.*  # what setuptools left building it here

port_file=$(mktemp)
"$python" - "$wheels" "$port_file" <<'EOF' &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *args: None  # quiet
try:  # one port build after build keeps the builds' layer cache (the URL is a build arg)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 47787), handler)
except OSError:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
open(sys.argv[2], "w").write(str(server.server_address[1]))
server.serve_forever()
EOF
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$port_file" ${tarball:+"$tarball"}' EXIT
for _ in $(seq 1 100); do [ -s "$port_file" ] && break; sleep 0.1; done
pip_options="--no-index --find-links http://127.0.0.1:$(cat "$port_file")/"

build() {  # build NAME DOCKERFILE [BASE]
  local name=$1 file=$2 base=$3
  say "$name: docker build -f $file"
  docker build --quiet --network host --file "$file" \
    --build-arg "BASE=$base" --build-arg "PIP_OPTIONS=$pip_options" \
    --build-arg "VERSION=$version" --build-arg "SOURCE=$source_url" \
    --build-arg "REVISION=$revision" \
    --tag "$name:$version" --tag "$name:latest" . >/dev/null
}
build inferoxy/gateway Dockerfile "inferoxy/base:$version"
build inferoxy/model-base worker/Dockerfile "inferoxy/base:$version"
build inferoxy/example-face examples/images/face/Dockerfile "inferoxy/model-base:$version"
build inferoxy/example-legacy examples/images/legacy/Dockerfile "inferoxy/model-base:$version"

say "done"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E "^inferoxy/(base|gateway|model-base|example-[a-z]+):$version" >&2
