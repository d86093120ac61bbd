# The two commands a newcomer needs (README.md): `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.serve-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples]'
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples,test]'
	touch $@

# perf_analyzer (Triton's load generator) ships inside the tritonclient 2.48.0 manylinux wheel.
# It lives in a venv of its own so its tritonclient pin never meets the main venv's; it runs
# without a GPU given libb64 (apt) and libcudart.so.12 (pip), which bench/perf_analyzer.sh
# puts on LD_LIBRARY_PATH.
PERF_VENV ?= .venv-perf
PERF_PINS := tritonclient==2.48.0 nvidia-cuda-runtime-cu12==12.9.79

$(PERF_VENV)/.installed: | libb64
	rm -rf $(PERF_VENV)
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/pip install --quiet --no-deps $(PERF_PINS)
	PERF_VENV=$(PERF_VENV) bench/perf_analyzer.sh --version
	touch $@

# The benchmark's peers, each in a venv of its own (never the main one): Triton and PyTriton
# from the nvidia-pytriton wheel (numpy 1.x: the Python backend's stub gives empty outputs with
# numpy 2), MLServer, Ray Serve. `make bench` installs them, then runs the quick suite.
BENCH_PEERS := triton mlserver ray
BENCH_PINS_triton := nvidia-pytriton==0.7.0 'numpy>=1.26,<2'
BENCH_PINS_mlserver := 'mlserver>=1.7,<1.8'
BENCH_PINS_ray := 'ray[serve]>=2.40'

.venv-bench-%/.installed:
	rm -rf .venv-bench-$*
	$(PYTHON) -m venv .venv-bench-$*
	.venv-bench-$*/bin/pip install --quiet $(BENCH_PINS_$*)
	touch $@

$(VENV)/.bench-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples,test,bench]'
	touch $@

.PHONY: serve test lint images perf-analyzer libb64 redis-server chromium haproxy kubectl bench \
	bench-peers wrk
serve: $(VENV)/.serve-deps  ## run Inferoxy on the example models (embedded defaults)
	$(BIN)/inferoxy serve --models examples/models.yaml

# The images (Dockerfile, worker/Dockerfile, examples/images/): a Debian base by mmdebstrap and
# wheels built here, nothing from a public image registry (docs/docker.md). Needs root, docker
# and mmdebstrap; the engine is $$DOCKER_HOST's.
images: | $(BIN)/python
	images/build.sh $(BIN)/python

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy

# Installs the shared library perf_analyzer links (Debian's libb64-0d) when it is missing.
libb64:
	@PATH="$$PATH:/sbin:/usr/sbin" ldconfig -p | grep -q 'libb64\.so\.0d' || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq libb64-0d >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq libb64-0d; }; \
	  else \
	    echo 'perf_analyzer needs libb64.so.0d: install it (Debian/Ubuntu: sudo apt-get install libb64-0d), then run make perf-analyzer again' >&2; \
	    exit 1; \
	  fi; }

# The model manager's tests start their own redis-server (Debian's redis-server package).
redis-server:
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq redis-server >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	  else \
	    echo 'the tests need redis-server: install it (Debian/Ubuntu: sudo apt-get install redis-server), then run make test again' >&2; \
	    exit 1; \
	  fi; }

# The status page's test drives a real headless browser (Debian's chromium).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq chromium; }; \
	  else \
	    echo 'the tests need chromium: install it (Debian: sudo apt-get install chromium), then run make test again' >&2; \
	    exit 1; \
	  fi; }

# The scale-out tests: HAProxy in front of two gateways, kustomize (in kubectl) for
# deploy/kubernetes (Debian: haproxy, kubernetes-client).
haproxy kubectl:
	@PATH="$$PATH:/usr/sbin:/sbin" command -v $@ >/dev/null || { \
	  pkg=$$([ $@ = kubectl ] && echo kubernetes-client || echo $@); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq $$pkg >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq $$pkg; }; \
	  else \
	    echo "the tests need $@: install it (Debian/Ubuntu: sudo apt-get install $$pkg), then run make test again" >&2; \
	    exit 1; \
	  fi; }

bench-peers: $(foreach p,$(BENCH_PEERS),.venv-bench-$(p)/.installed)  ## the peers' venvs

# wrk drives every system's v2 JSON over HTTP (Debian's wrk package).
wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq wrk >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq wrk; }; \
	  else \
	    echo 'the benchmark needs wrk: install it (Debian/Ubuntu: sudo apt-get install wrk)' >&2; \
	    exit 1; \
	  fi; }

bench: $(VENV)/.bench-deps perf-analyzer wrk bench-peers  ## quick benchmark against the peers
	$(BIN)/inferoxy bench --quick

perf-analyzer: $(PERF_VENV)/.installed  ## perf_analyzer in .venv-perf (run it with bench/perf_analyzer.sh)

test: lint perf-analyzer redis-server chromium haproxy kubectl wrk  ## lint, type-check and run the whole test suite
	$(BIN)/python -m pytest -q
