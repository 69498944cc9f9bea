# The first two commands of the README: `make book` and `make test`. Both set up .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sslkit-installed

.PHONY: venv book test unit notebooks sweep sweep-gpu lab clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# a kernel named `sslkit` inside the venv, so papermill and nbval run this Python
	$(PY) -m ipykernel install --prefix $(VENV) --name sslkit --display-name "Python (sslkit)" >/dev/null
	touch $(STAMP)

book: venv
	$(VENV)/bin/sslkit book

test: unit notebooks

unit: venv
	$(VENV)/bin/pytest -q tests

# every notebook end to end at smoke size (SSLKIT_SMOKE=1: tiny subset, one epoch)
notebooks: venv
	SSLKIT_SMOKE=1 SSLKIT_REPORTS=$(CURDIR)/.cache/smoke-reports $(VENV)/bin/pytest -q --nbval-lax --nbval-kernel-name sslkit -p no:cacheprovider notebooks

# a grid of notebooks x parameters (finished points are skipped; Ctrl-C and rerun to continue)
sweep: venv
	$(VENV)/bin/sslkit sweep sweeps/default.yaml

sweep-gpu: venv
	$(VENV)/bin/sslkit sweep sweeps/gpu.yaml

lab: venv
	$(PY) -m pip install --quiet -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf reports/* .cache
