# Two set-up commands (see README): `make demo` and `make test`.
# torch is pinned to the CPU build 2.13.0 before the package is installed, so pip never
# pulls several GB of CUDA wheels for an unpinned `torch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
DEMO := fixtures/deit_tiny

EXT := editor_ext

.PHONY: demo test bench clean ext

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/quantlens check $(DEMO)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q
	$(MAKE) ext

# The VS Code extension: installed from its lock file (again whenever package.json or the lock
# changes), linted, type-checked, bundled, unit-tested and packaged as editor_ext/quantlens.vsix.
$(EXT)/node_modules/.installed: $(EXT)/package.json $(EXT)/package-lock.json
	cd $(EXT) && npm ci --no-audit --no-fund
	touch $@

ext: $(EXT)/node_modules/.installed
	cd $(EXT) && npm run lint && npm run typecheck && npm run bundle && npm test && npm run package

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) quantlens.egg-info .pytest_cache $(EXT)/node_modules $(EXT)/dist $(EXT)/out $(EXT)/quantlens.vsix
