# Two set-up commands (see README): `make demo` and `make test`.
# torch is pinned to the CPU build 2.13.0 before the package is installed, so pip never
# pulls several GB of CUDA wheels for an unpinned `torch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
DEMO := fixtures/deit_tiny

EXT := editor_ext

.PHONY: demo test bench bench-lsp clean ext e2e-vscode e2e-neovim

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

# End to end, as a user sees it (not part of `make test`: it needs Chromium and code-server,
# about 300 MB installed, and takes minutes). e2e-vscode installs the .vsix into code-server
# (VS Code 1.100.3, from editor_ext/e2e's lock file), opens a copy of fixtures/two_branch_concat
# in headless Chromium and checks the squiggle, Problems, hover, inlay hint, Layers view, Quantize
# Now, Show Report and a config edit, with screenshots in editor_ext/e2e/screenshots/.
# e2e-neovim runs the README's Neovim stanza in a headless Neovim on the same fixture.
E2E := $(EXT)/e2e

e2e-vscode: $(VENV)/.installed ext
	bash $(E2E)/apt.sh chromium libkrb5-dev ripgrep build-essential
	bash $(E2E)/install.sh
	cd $(E2E) && node vscode.mjs

e2e-neovim: $(VENV)/.installed
	bash $(E2E)/apt.sh neovim
	bash $(E2E)/neovim.sh

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run.py --write BENCHMARKS.md
	$(BIN)/python bench/stages.py --write BENCHMARKS.md

# The language server's section of BENCHMARKS.md (about 25 min; not part of `bench`).
bench-lsp: $(VENV)/.installed-dev
	$(BIN)/python bench/lsp.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) quantlens.egg-info .pytest_cache $(EXT)/node_modules $(EXT)/dist $(EXT)/out $(EXT)/quantlens.vsix \
		$(EXT)/e2e/node_modules $(EXT)/e2e/.cache $(EXT)/e2e/screenshots
