# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv with the pins.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: setup demo test clean bundle

$(BIN)/synbt: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,eval]"
	touch $(BIN)/synbt

setup: $(BIN)/synbt

demo: setup
	$(BIN)/synbt demo --out $(DEMO_OUT) --overwrite

test: setup
	LANG=C.UTF-8 PYTHONUTF8=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q Testing

clean:
	rm -rf $(VENV) $(DEMO_OUT)

# Rebuild the shipped bundle from the phantom (hours on CPU): make bundle WORK=... VERSION=1.1 CHANGE="what changed"
WORK ?= bundle_work
bundle: setup
	$(BIN)/python tools/rebuild_bundle.py --work $(WORK) --version "$(VERSION)" --change "$(CHANGE)"
