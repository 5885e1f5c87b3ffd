# The two commands: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv if needed and install everything the project needs first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint format schemas setup clean

# The main job: validate every example, plan the coding agent on the mixed cluster (placement,
# TCO, baselines), then plan, compile and run the quickstart agent end to end on this machine
# (SmolLM2 on the CPU, a real index, a sandboxed Python tool).
run: setup
	$(BIN)/hetagent validate examples/agents/*.yaml examples/clusters/*.yaml
	$(BIN)/hetagent plan examples/agents/coding-agent.yaml \
		--cluster examples/clusters/mixed-generations.yaml
	$(BIN)/hetagent plan examples/agents/quickstart.yaml --cluster examples/clusters/local.yaml
	$(BIN)/hetagent run examples/agents/quickstart.yaml --cluster examples/clusters/local.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# JSON Schemas for editors (the examples point at them); a test keeps them current.
schemas: setup
	$(BIN)/hetagent schema AgentGraph -o schemas/agentgraph.schema.json
	$(BIN)/hetagent schema Cluster -o schemas/cluster.schema.json

setup: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the CPU build on this machine's disk; letting pip resolve a plain
# `torch` requirement would fetch a multi-GB CUDA build instead (see DEVELOPERS.md).
$(INSTALLED): $(BIN)/python pyproject.toml setup.py /usr/bin/chromium
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/hetagent models pull smollm2-135m
	touch $@

# The dashboard's browser test drives Debian's Chromium (Playwright never downloads a browser).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
