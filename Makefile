# The first two commands a newcomer runs: `make demo`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# The Claude Desktop extension: the MCPB CLI from the npm registry, pinned here once (tests read this line too).
MCPB_VERSION := 2.1.2
MCPB ?= npx --yes @anthropic-ai/mcpb@$(MCPB_VERSION)
MCPB_STAGE ?= build/mcpb
MCPB_BUNDLE ?= dist/b24-telephony-mcp.mcpb

.PHONY: venv demo demo-events test lint format bench mcpb clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo_session.py

# The other direction: the portal tells a voice agent that a manager clicked a number (events toolset).
demo-events: $(STAMP)
	$(PY) examples/click_to_call_agent.py

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/tool_sizes.py
	$(PY) benchmarks/run.py
	$(PY) benchmarks/statistics_seed.py
	$(PY) benchmarks/batching.py
	$(PY) benchmarks/analytics.py
	$(PY) benchmarks/remote.py
	$(PY) benchmarks/events.py

# A uv bundle: the manifest beside the project's pyproject.toml and package source; the host installs the
# dependencies with uv. Staged in its own directory so nothing else of the checkout goes in.
mcpb:
	rm -rf $(MCPB_STAGE)
	mkdir -p $(MCPB_STAGE) $(dir $(MCPB_BUNDLE))
	cp mcpb/manifest.json mcpb/.mcpbignore pyproject.toml README.md LICENSE $(MCPB_STAGE)/
	cp -r server $(MCPB_STAGE)/server
	$(MCPB) pack $(MCPB_STAGE) $(MCPB_BUNDLE)

clean:
	rm -rf $(VENV) build dist *.egg-info server/*.egg-info .pytest_cache .ruff_cache benchmarks/results
