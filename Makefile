# The README's two commands: `make demo` and `make test`. Both set up a fresh machine first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := sip-tester espeak-ng sox kamailio prometheus systemd procps
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.PHONY: setup debs venv demo test lint check unit bench clean

setup: debs venv

# Debian tools the tests and the demo use: sipp, espeak-ng, sox, kamailio, promtool.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.stamp-installed

$(VENV)/.stamp-installed: pyproject.toml
	[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python -m bridge demo

lint: venv
	$(BIN)/ruff check bridge sip standin tests bench
	$(BIN)/ruff format --check bridge sip standin tests bench
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

test: setup lint
	$(BIN)/python -m pytest -q -rs tests

bench: setup
	$(BIN)/python bench/standin_bench.py

clean:
	rm -rf $(VENV) build *.egg-info var

# Kamailio on one SIP address (KAMAILIO_LISTEN) in front of the bridge, started next to it with a
# dispatcher list generated from CONFIG (bridge/assets/kamailio.cfg, docs/kamailio.md). Ctrl-C stops both.
CONFIG ?= bridge/assets/config.yaml
KAMAILIO_LISTEN ?= udp:127.0.0.1:5060
KAMAILIO_DIR ?= var/kamailio
HOSTS_EXTRA ?=
.PHONY: kamailio bench-load
kamailio: setup
	@mkdir -p $(KAMAILIO_DIR)
	$(BIN)/vblaze-bridge dispatcher-list --config $(CONFIG) $(HOSTS_EXTRA) > $(KAMAILIO_DIR)/dispatcher.list
	@cat $(KAMAILIO_DIR)/dispatcher.list
	$(BIN)/vblaze-bridge run --config $(CONFIG) & bridge=$$!; \
	trap 'kill -TERM $$bridge 2>/dev/null; wait $$bridge' EXIT; \
	kamailio -f bridge/assets/kamailio.cfg -DD -E -m 64 -M 8 \
	  -w $(abspath $(KAMAILIO_DIR)) -Y $(abspath $(KAMAILIO_DIR)) -A LISTEN=$(KAMAILIO_LISTEN) \
	  -A 'DS_LIST="$(abspath $(KAMAILIO_DIR))/dispatcher.list"' \
	  -A 'CTL_SOCKET="unix:$(abspath $(KAMAILIO_DIR))/kamailio_ctl"'

# Load benchmark: K calls through Kamailio into the bridge and into a bare pjsua2 pool (the floor), in
# interleaved pairs. BENCH_ARGS="--calls 40 --seconds 20 --pairs 2" for a smaller run; the default is
# 200 calls x 30 s, 3 pairs.
BENCH_ARGS ?=
bench-load: setup
	$(BIN)/python bench/load.py $(BENCH_ARGS)
