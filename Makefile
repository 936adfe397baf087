# Two commands on a fresh machine: `make run` (set-up + the main job) and `make test` (set-up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-all install lab notebooks clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) experiments/run.py modality=audio

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# JupyterLab from the project's environment, on localhost (open the printed URL; LAB_ARGS adds options)
lab: $(STAMP)
	$(VENV)/bin/jupyter-lab --notebook-dir=notebooks --ip=127.0.0.1 --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# re-execute every notebook in place (mini-budget runs, figures downscaled) and commit them
notebooks: $(STAMP)
	$(PY) -m experiments.notebooks
	git add notebooks/*.ipynb && git commit -m "notebooks: re-executed with their outputs" notebooks/*.ipynb

clean:
	rm -rf $(VENV) runs outputs multirun data/mini
