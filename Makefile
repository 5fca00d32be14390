# Set-up and everyday targets. A fresh machine needs only python3 (3.10+) with venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/dmfnet: pyproject.toml setup.py src/dmfnet/capture/_records.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cluster]'  # the cluster tests run in CI too
	touch $@

install: $(BIN)/dmfnet

demo: install
	$(BIN)/dmfnet demo

test: install
	$(BIN)/ruff check src tests benchmarks scripts setup.py
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
	find src -name '*.so' -delete
