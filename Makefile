# The two commands of the README are `make run` and `make test`; both build .venv from the lock when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drifting-installed
# the main job: the run notebook and its papermill parameters (e.g. make run ARGS="-p steps 50")
RUN_NB ?= nbs/run_latent.ipynb
ARGS ?=
NBDEV_WORKERS ?= 2

.PHONY: run test nbtest pytest docs readme outputs lock venv clean-venv

$(STAMP): requirements.lock.txt setup.py settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/drifting run $(RUN_NB) $(ARGS)

test: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing
	$(BIN)/python -m pytest -q

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

docs: $(STAMP) readme
	$(BIN)/python tools/build_docs.py

# re-execute the library notebooks so the committed outputs (small figures, tables) are current
outputs: $(STAMP)
	$(BIN)/python tools/run_nbs.py
	$(BIN)/nbdev_clean

readme: $(STAMP)
	$(BIN)/python tools/make_readme.py

# --upgrade-package torch: the old lock's label-free `torch==2.13.0` must not act as a preference, or uv takes the
# CUDA wheel (+ nvidia-*) from PyPI instead of the local CPU build
lock:
	@command -v uv >/dev/null || $(BIN)/python -m pip install --quiet uv
	$$(command -v uv || echo $(BIN)/uv) pip compile requirements.in -o requirements.lock.txt --python-version 3.11 \
	    --no-header --upgrade-package torch $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
	# the CPU wheel carries a local label; pin the public version so a GPU machine gets the CUDA build of the same release
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' requirements.lock.txt

clean-venv:
	rm -rf $(VENV)
