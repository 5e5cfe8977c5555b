# Two commands do all set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test test-fast lab notebooks sync clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m dino_lite estimate --preset cpu-demo
	$(BIN)/python -m dino_lite train --preset cpu-demo --out $(DEMO_OUT)
	$(BIN)/python -m dino_lite knn --checkpoint $(DEMO_OUT)/checkpoint.pt --json $(DEMO_OUT)/knn.json
	$(BIN)/python -m dino_lite knn --preset cpu-demo --random-init --json $(DEMO_OUT)/knn-random-init.json
	$(BIN)/python -m dino_lite attention --checkpoint $(DEMO_OUT)/checkpoint.pt --images shapes --out $(DEMO_OUT)/attention --json $(DEMO_OUT)/attention.json
	$(BIN)/python -m dino_lite attention --preset cpu-demo --random-init --images shapes --out $(DEMO_OUT)/attention-random-init --json $(DEMO_OUT)/attention-random-init.json
	@echo
	@$(BIN)/python -m dino_lite summary --run $(DEMO_OUT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests --nbval-lax notebooks

$(VENV)/.installed-lab: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[notebooks]"
	touch $@

# Open the notebooks in JupyterLab (the .py twins open as notebooks too, through jupytext).
lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --notebook-dir=notebooks

# The inner loop: every test not marked slow (torchrun, multi-run), no notebooks.
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow" tests

# Re-execute every notebook from its .py twin, store the fresh outputs (figures) in the .ipynb
# (no --update: it would keep the old outputs) and
# refresh the README's notebook thumbnails in docs/.
notebooks: $(VENV)/.installed-dev
	for nb in notebooks/*.py; do $(BIN)/jupytext --to ipynb --execute $$nb || exit 1; done
	$(BIN)/python docs/notebook_figures.py

clean:
	rm -rf runs .pytest_cache
