# The README's two commands: `make demo` and `make test`. Both set up a fresh machine first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := sip-tester espeak-ng sox kamailio kamailio-tls-modules rtpengine-daemon baresip tshark openssl \
  prometheus systemd procps chromium nats-server
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.PHONY: setup debs venv demo test lint check unit bench clean

setup: debs venv

# Debian tools the tests and the demo use: sipp, espeak-ng, sox, kamailio (with its TLS module),
# rtpengine, baresip and tshark (the secure edge), openssl, prometheus (and promtool), chromium,
# nats-server (the JetStream sink's tests).
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
# SECURE=1 turns the secure edge on (docs/security.md): a TLS listener (KAMAILIO_TLS_LISTEN), digest or
# allow-list per source (AUTH_DIR), SRTP through an rtpengine started here too (RTPENGINE_*), pike. A
# self-signed certificate for 127.0.0.1 and empty auth tables are made in KAMAILIO_DIR unless they exist
# (TLS_CERT/TLS_KEY/AUTH_DIR to use your own); add a device with `make kamailio-user DEVICE=alice`.
CONFIG ?= bridge/assets/config.yaml
KAMAILIO_LISTEN ?= udp:127.0.0.1:5060
KAMAILIO_DIR ?= var/kamailio
HOSTS_EXTRA ?=
SECURE ?=
KAMAILIO_TLS_LISTEN ?= tls:127.0.0.1:5061
TLS_CERT ?= $(abspath $(KAMAILIO_DIR))/tls/cert.pem
TLS_KEY ?= $(abspath $(KAMAILIO_DIR))/tls/key.pem
AUTH_DIR ?= $(abspath $(KAMAILIO_DIR))/auth
AUTH_REALM ?= vblaze-bridge
RTPENGINE_INTERFACE ?= 127.0.0.1
RTPENGINE_NG ?= 127.0.0.1:2223
RTPENGINE_CLI ?= 127.0.0.1:2224
RTPENGINE_PORT_MIN ?= 40000
RTPENGINE_PORT_MAX ?= 40999
KAMAILIO_DEFINES = $(if $(SECURE),-A WITH_SECURE -A TLS_LISTEN=$(KAMAILIO_TLS_LISTEN) -A 'TLS_CERT="$(TLS_CERT)"' \
  -A 'TLS_KEY="$(TLS_KEY)"' -A 'AUTH_DB="text://$(AUTH_DIR)"' -A 'AUTH_REALM="$(AUTH_REALM)"' \
  -A 'RTPENGINE_SOCK="udp:$(RTPENGINE_NG)"')
RTPENGINE_CMD = rtpengine --config-file=none --foreground --log-stderr --table=-1 \
  --interface=$(RTPENGINE_INTERFACE) --listen-ng=$(RTPENGINE_NG) --listen-cli=$(RTPENGINE_CLI) \
  --port-min=$(RTPENGINE_PORT_MIN) --port-max=$(RTPENGINE_PORT_MAX) \
  --pidfile=$(abspath $(KAMAILIO_DIR))/rtpengine.pid --delete-delay=0
# db_text tables of the cfg's AUTH_DB (docs/security.md): the allow-list and the devices (HA1 only).
DBTEXT_VERSION = id(int,auto) table_name(string) table_version(int)\n1:address:6\n2:subscriber:7\n
DBTEXT_ADDRESS = id(int,auto) grp(int) ip_addr(string) mask(int) port(int) tag(string,null)\n
DBTEXT_SUBSCRIBER = id(int,auto) username(string) domain(string) ha1(string)\n
DEVICE ?=
.PHONY: kamailio kamailio-secure-files kamailio-user bench-load
kamailio: setup
	@mkdir -p $(KAMAILIO_DIR)
	$(BIN)/vblaze-bridge dispatcher-list --config $(CONFIG) $(HOSTS_EXTRA) > $(KAMAILIO_DIR)/dispatcher.list
	@cat $(KAMAILIO_DIR)/dispatcher.list
	$(if $(SECURE),@$(MAKE) --no-print-directory -o setup kamailio-secure-files)
	$(BIN)/vblaze-bridge run --config $(CONFIG) & bridge=$$!; rtpe=; \
	$(if $(SECURE),$(RTPENGINE_CMD) & rtpe=$$!;) \
	trap 'kill -TERM $$bridge $$rtpe 2>/dev/null; wait $$bridge $$rtpe' EXIT; \
	kamailio -f bridge/assets/kamailio.cfg -DD -E -m 64 -M 8 \
	  -w $(abspath $(KAMAILIO_DIR)) -Y $(abspath $(KAMAILIO_DIR)) -A LISTEN=$(KAMAILIO_LISTEN) \
	  -A 'DS_LIST="$(abspath $(KAMAILIO_DIR))/dispatcher.list"' \
	  -A 'CTL_SOCKET="unix:$(abspath $(KAMAILIO_DIR))/kamailio_ctl"' $(KAMAILIO_DEFINES)

# A throwaway certificate (for trying the edge; a real one comes from your CA) and empty auth tables.
kamailio-secure-files:
	@umask 077; mkdir -p $(dir $(TLS_KEY)) $(AUTH_DIR)
	@[ -f $(TLS_KEY) ] || { openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 \
	  -addext subjectAltName=IP:127.0.0.1 -keyout $(TLS_KEY) -out $(TLS_CERT) 2>/dev/null && \
	  echo "made a self-signed certificate $(TLS_CERT)"; }
	@umask 077; [ -f $(AUTH_DIR)/version ] || printf '$(DBTEXT_VERSION)' > $(AUTH_DIR)/version
	@umask 077; [ -f $(AUTH_DIR)/address ] || printf '$(DBTEXT_ADDRESS)' > $(AUTH_DIR)/address
	@umask 077; [ -f $(AUTH_DIR)/subscriber ] || printf '$(DBTEXT_SUBSCRIBER)' > $(AUTH_DIR)/subscriber

# A device's digest credentials: the password is read from the terminal and only its HA1 is stored.
kamailio-user: kamailio-secure-files
	@[ -n "$(DEVICE)" ] || { echo "usage: make kamailio-user DEVICE=name"; exit 2; }
	@read -rsp "password for $(DEVICE): " pw; echo; \
	ha1=$$(printf '%s' "$(DEVICE):$(AUTH_REALM):$$pw" | md5sum | cut -d' ' -f1); \
	id=$$(( $$(wc -l < $(AUTH_DIR)/subscriber) )); \
	printf '%s:%s:%s:%s\n' $$id "$(DEVICE)" "$(AUTH_REALM)" $$ha1 >> $(AUTH_DIR)/subscriber; \
	echo "added $(DEVICE) to $(AUTH_DIR)/subscriber (Kamailio reads it at start: restart it)"

# Load benchmark: K calls through Kamailio into the bridge and into a bare pjsua2 pool (the floor), in
# interleaved pairs. BENCH_ARGS="--calls 40 --seconds 20 --pairs 2" for a smaller run; the default is
# 200 calls x 30 s, 3 pairs.
BENCH_ARGS ?=
bench-load: setup
	$(BIN)/python bench/load.py $(BENCH_ARGS)
