# Blackboard: one command per job. Every target sets up what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTO_SRC := $(wildcard protos/blackboard/*/*.proto)

.PHONY: all setup servers protos check-protos run test lint typecheck unit demo bench bench-full clean

all: test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,fast,loadtest]'
	touch $(STAMP)

setup: $(STAMP)

# redis-server, etcd and etcdctl from Debian's packages, installed only when missing.
servers:
	@if ! command -v redis-server >/dev/null || ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then \
		echo "installing redis-server, etcd-server, etcd-client"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			redis-server etcd-server etcd-client >/dev/null; \
	fi

protos: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=protos --grpc_python_out=protos \
		--mypy_out=protos --mypy_grpc_out=protos $(PROTO_SRC)

# Regenerating must not change what is committed.
check-protos: protos
	@git diff --exit-code -- protos || { echo "generated code is stale: run 'make protos' and commit"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check server clients tests
	$(BIN)/ruff format --check server clients tests
	$(BIN)/mypy server/blackboard_server clients/blackboard_client clients/loadtest

run: $(STAMP)
	$(BIN)/blackboard-server

test: $(STAMP) servers check-protos lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

demo: $(STAMP)
	$(BIN)/python -m blackboard_client.demo

# A short fixed run of bb-loadtest (under 3 minutes) and the target table; bench-full
# adds 1000 subscribers, 10,000 idle subscribers and 100,000 conversations.
bench: $(STAMP) servers
	$(BIN)/bb-loadtest bench

bench-full: $(STAMP) servers
	$(BIN)/bb-loadtest bench --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
