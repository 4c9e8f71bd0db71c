# parity: the two commands a new machine needs are `make demo` and `make test` (see README).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parity-setup

.PHONY: setup browser demo demo-full test lint unit clean

setup: $(STAMP)

# The browser tests (tests/browser/) open report.html in Debian's headless Chromium: only
# `make test` installs it, never the demo.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  else \
	    echo "chromium is missing (the browser test needs it): sudo apt-get install -y chromium"; \
	  fi; }

# The virtualenv with vLLM chosen per machine (CUDA or the CPU build), installed with uv where
# it can be had, else pip; the stamp makes a second `make setup` a no-op (scripts/setup-venv.sh).
$(STAMP): pyproject.toml Makefile scripts/setup-venv.sh
	sh scripts/setup-venv.sh $(PYTHON) $(VENV)
	touch $(STAMP)

# The main job, the mission: the quick suite on the built-in default model (SmolLM2-135M-Instruct),
# report in results/<run-id>/. vLLM V0 0.8.5 (its environment built with uv on first use, as
# `parity env create v0` does) against V1 0.32 on the RL metrics, V1 with the V0-parity settings
# (pass) and V1 defaults (fail, naming the fix); then the four fix categories of the write-up,
# each with a passing setting and a negative control; four engine starts, generations shared
# where prompts and sampling agree. Its plan: `parity check --suite quick --dry-run`.
# demo-full: every shipped scenario (every runtime probe and update control, V0 on them too).
demo: setup
	$(BIN)/parity check --suite quick

demo-full: setup
	$(BIN)/parity check scenarios/

# Unit tests, CLI tests and the real-engine tests (marker `engine`), on two pytest-xdist
# workers (engine starts are single-threaded imports and spawns: two at a time use both cores);
# tests sharing an expensive fixture run on one worker (tests/conftest.py, xdist_group).
# TEST_WORKERS=3 runs a third worker (bound to a core
# another already uses): not measured to be faster yet (docs/performance.md).
TEST_WORKERS ?= 2
test: setup browser lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=0 --durations-min=1

# The house rules, checked before any test runs: the layer and no-cycle contracts
# (import-linter, pyproject.toml), lint and formatting (ruff).
lint: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check parity tests scripts
	$(BIN)/ruff format --check parity tests scripts

unit: setup
	$(BIN)/python -m pytest -q -m "not engine"

clean:
	rm -rf $(VENV) .pytest_cache
