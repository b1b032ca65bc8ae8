# make test : create .venv from the requirements (again when they change), then run the tests
# make demo : the same set-up, then the whole toolkit end to end, offline, on tiny models
# make world: the synthetic world, every model trained on it, results table (<= 20 minutes on 2 cores)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
WORLD_DIR ?= world_output
WORLD_MINUTES ?= 20
# The suite's pytest-xdist workers (one torch thread each: tests/conftest.py). loadgroup: the tests that
# share a module-scoped fixture stay in one worker, the others are spread singly (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15

# Nothing here may reach a model hub or the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export YOLO_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: test test-world demo world venv clean browser bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) -m "not world_run" tests

# The synthetic-world runs of tests/test_world.py (marked world_run): the reduced run that must learn (about
# 5 minutes) and world.sh's training path on a tiny world (under 2 minutes), so they have a target of their
# own and `make test` stays within 5 minutes; CI runs both (.ci/run).
test-world: $(STAMP)
	$(BIN)/python -m pytest -q -m world_run tests/test_world.py

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) PYTHON=$(BIN)/python bash scripts/demo.sh

# The synthetic world: train every model on it and show that the toolkit learns (README, "Results on
# the synthetic world"). WORLD_MINUTES=60 for the longer setting.
world: $(STAMP)
	WORLD_DIR=$(WORLD_DIR) WORLD_MINUTES=$(WORLD_MINUTES) PYTHON=$(BIN)/python bash world/world.sh

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# Debian's chromium (the review gallery's headless-browser test) and a Java runtime (pycocoevalcap's PTB
# tokenizer, the reference the caption metrics are compared with); those tests skip without them.
browser:
	(command -v chromium >/dev/null && command -v java >/dev/null) || (SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium default-jre-headless)

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(WORLD_DIR) .pytest_cache
