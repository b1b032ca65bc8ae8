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

.PHONY: test test-world demo world world-families venv clean browser bench interop

venv: $(STAMP)

# The stamp holds a hash of what the requirement files say, not a time: a fresh clone beside a venv that
# installed the same files does not reinstall, and a changed file reinstalls whatever its mtime says.
REQUIREMENTS := requirements.txt requirements-test.txt pyproject.toml
REQUIREMENTS_HASH := $(firstword $(shell cat $(REQUIREMENTS) | (sha256sum 2>/dev/null || shasum -a 256)))
ifneq ($(REQUIREMENTS_HASH),$(shell cat $(STAMP) 2>/dev/null))
.PHONY: $(STAMP)
endif

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	echo $(REQUIREMENTS_HASH) > $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) -m "not world_run" tests

# The synthetic-world runs of tests/test_world.py (marked world_run): the reduced run that must learn (about
# 5 minutes) and world.sh's training path on a tiny world (under 2 minutes), so they have a target of their
# own and `make test` stays within 4 minutes; CI runs both (.ci/run).
test-world: $(STAMP)
	$(BIN)/python -m pytest -q -m world_run tests/test_world.py

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) PYTHON=$(BIN)/python bash scripts/demo.sh

# The synthetic world: train every model on it and show that the toolkit learns (README, "Results on
# the synthetic world"). WORLD_MINUTES=60 for the longer setting.
world: $(STAMP)
	WORLD_DIR=$(WORLD_DIR) WORLD_MINUTES=$(WORLD_MINUTES) PYTHON=$(BIN)/python bash world/world.sh

# Every model family the toolkit trains, trained on one world run's annotations and scored through its own box
# parser (README, "Every family on the world"); runs `make world` first when WORLD_DIR holds no finished run.
world-families: $(STAMP)
	WORLD_DIR=$(WORLD_DIR) WORLD_MINUTES=$(WORLD_MINUTES) PYTHON=$(BIN)/python bash world/families.sh

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# Debian's chromium (the galleries' headless-browser tests; the web demo's browser test drives it with Playwright
# and fails without it, naming this target) and a Java runtime (pycocoevalcap's PTB tokenizer, the reference the
# caption metrics are compared with).
browser:
	(command -v chromium >/dev/null && command -v java >/dev/null) || (SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium default-jre-headless)

# Our converted data trained in LLaMA-Factory 0.9.5 and ms-swift 4.6.0 (2 LoRA steps each, on the square images),
# and their tokenisation of one record beside ours (docs/interop.md). Builds its own venvs under .venv-interop/ the
# first time (pip, about 16 minutes); not part of CI.
interop:
	bash scripts/interop.sh

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(WORLD_DIR) .pytest_cache
