# Two commands for a fresh machine: `make demo` (set up + generate on the tiny built-in model) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned: an unpinned requirement may pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/na-accel generate examples/prompts.txt --out outputs/demo

# Two pytest steps: Triton decides at import whether kernels are compiled or interpreted, so the interpreter tests
# (marker `interpreter`) run in their own process with TRITON_INTERPRET=1. Both spread over the cores (pytest-xdist,
# `-n auto`: 2 workers on a 2-core machine, which halves the run; every test also passes alone).
test: setup
	$(BIN)/ruff check na_accel tests bench examples training
	$(BIN)/python -m pytest -q -n auto -m "not interpreter"
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n auto -m interpreter

lint: setup
	$(BIN)/ruff check na_accel tests bench

clean:
	rm -rf $(VENV) outputs
