# The two commands of the README are `make run` and `make test`; both build .venv from the lock when it is missing.
SHELL := /bin/bash
# the first interpreter in the supported range (settings.ini python_requires: >=3.11,<3.13) builds .venv
PY_OK := import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))
PYTHON ?= $(firstword $(foreach p,python3.12 python3.11 python3,$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c '$(PY_OK)' 2>/dev/null && echo $(p))))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drifting-installed
# the main job: the run notebook and its papermill parameters (e.g. make run ARGS="-p steps 50")
RUN_NB ?= nbs/run_latent.ipynb
ARGS ?=
NBDEV_WORKERS ?= 2
# extra nbdev test flags: `make test FLAGS="slow"` also runs the cells gated with `#| slow` (gpu, net likewise)
FLAGS ?=
NBFLAGS := $(if $(FLAGS),--flags "$(FLAGS)")

.PHONY: run test nbtest pytest docs readme outputs lock venv clean-venv

$(STAMP): requirements.lock.txt setup.py settings.ini
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "make: no Python 3.11 or 3.12 found (python3.12, python3.11, python3); install one or pass PYTHON=/path/to/python3.x" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/drifting run $(RUN_NB) $(ARGS)

test: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing $(NBFLAGS)
	$(BIN)/python -m pytest -q

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing $(NBFLAGS)

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

lock:
	@command -v uv >/dev/null || $(BIN)/python -m pip install --quiet uv
	# the CPU torch wheel comes from the machine's own wheel folder when its pip config names one (PIP_FIND_LINKS;
	# uv also reads UV_FIND_LINKS): the recipe names no machine folder
	$$(command -v uv || echo $(BIN)/uv) pip compile requirements.in -o requirements.lock.txt --python-version 3.11 \
	    --no-header --upgrade-package torch $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
	# the CPU wheel carries a local label; pin the public version so a GPU machine gets the CUDA build of the same release
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' requirements.lock.txt

clean-venv:
	rm -rf $(VENV)
