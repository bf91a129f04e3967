# scoredist — common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Written after a successful install, inside the (untracked) venv: install runs again only when there is no venv
# yet (a fresh clone, as in CI) or pyproject.toml / install.sh changed since; the package is editable (-e), so code
# changes need no reinstall. To force one: rm $(VENV)/.installed (or make -B install).
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: help install demo test lint tiny-sd mutation

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## create .venv: CPU torch wheel (if no torch) + scoredist[dev]; again only if pyproject changed

$(INSTALLED): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

demo: $(INSTALLED)  ## distil "a red cube" with loss=ours on the exact offline prior (CPU, < 1 minute)
	$(PY) train.py +experiment=demo

test: $(INSTALLED)  ## the test suite (CPU only, a few minutes)
	$(PY) -m pytest -q -n 2 --dist loadfile

lint:  ## ruff check + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

tiny-sd: $(INSTALLED)  ## a tiny random-weight SD pipeline in ./tiny-sd, for trying the SD code path offline
	$(PY) scripts/make_tiny_pipeline.py tiny-sd

mutation: $(INSTALLED)  ## mutation testing of losses, schedules, trainer, guidance base (slow: see DEVELOPERS.md)
	$(VENV)/bin/pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run && $(VENV)/bin/mutmut results
