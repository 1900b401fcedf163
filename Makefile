# preview-env developer entry points. Everything installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)

# The test bed alone (testbed.toolchain.BED); `make test` builds every component.
BED_COMPONENTS := kine kwok crds pulumi pulumi-kubernetes kubernetes kubernetes-node

.PHONY: test demo demo-db toolchain toolchain-bed testbed-up testbed-down lint venv clean

## make test: set up the venv and the toolchain, lint, then run every test on the real test bed.
test: $(STAMP) toolchain lint
	$(BIN)/pytest

## make demo: a preview environment on the local test bed: start, status, clean.
## Builds only the bed's components (not the S3 server, linters or language host of the tests).
demo: $(STAMP) toolchain-bed
	bash scripts/demo.sh

## make demo-db: a preview with its own database branch, copied for real on the real node.
demo-db: $(STAMP) toolchain-bed
	bash scripts/toolchain/build.sh pulumi-language-python
	bash scripts/demo-db.sh

venv: $(STAMP)
$(STAMP):
	rm -f $(VENV)/.installed-*
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

toolchain:
	bash scripts/toolchain/system-packages.sh
	bash scripts/toolchain/build.sh

toolchain-bed:
	bash scripts/toolchain/system-packages.sh
	bash scripts/toolchain/build.sh $(BED_COMPONENTS)

## make testbed-up [BROKERS=1]: the bed for a shell (BROKERS=1: RabbitMQ and Kafka too).
testbed-up: $(STAMP) toolchain-bed
	$(BIN)/python -m testbed up --state .testbed $(if $(BROKERS),--brokers)

testbed-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m testbed down --state .testbed; else rm -rf .testbed; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/lint/command_length.py

clean: testbed-down
	rm -rf $(VENV)
