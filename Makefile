# The README's two commands: `make demo` and `make test`. Both set up a fresh machine first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := sip-tester espeak-ng sox kamailio prometheus
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
