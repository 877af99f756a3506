# Herald: every target sets up what it needs on a fresh machine (venv, Kafka jars, ClickHouse).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HERALD_DATA_DIR ?= $(CURDIR)/.herald

.PHONY: venv infra setup run test unit integration bench down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Kafka (KRaft, 127.0.0.1:9092) and ClickHouse (127.0.0.1:9000/8123); both idempotent.
infra: venv
	deploy/local/kafka.sh start
	deploy/local/clickhouse.sh start

# Topics of the catalog and the ClickHouse migrations; both idempotent.
setup: infra
	$(BIN)/herald topics create
	$(BIN)/herald migrate

run: setup
	@echo
	@echo "Herald's infrastructure is up:"
	@echo "  Kafka       127.0.0.1:9092  (data and logs in $(HERALD_DATA_DIR)/kafka)"
	@echo "  ClickHouse  native 127.0.0.1:9000, HTTP http://127.0.0.1:8123, database herald"
	@echo "  Stop it all with: make down"

unit: venv
	$(BIN)/pytest tests/unit -q

integration: setup
	$(BIN)/pytest tests/integration -q

test: setup
	$(BIN)/pytest tests -q

down:
	-deploy/local/clickhouse.sh stop
	-deploy/local/kafka.sh stop

clean: down
	rm -rf $(HERALD_DATA_DIR) $(VENV)
