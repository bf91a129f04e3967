# scoredist — common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: help install demo test lint tiny-sd mutation

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install:  ## create .venv with the CPU torch wheel (if torch is absent) and scoredist[dev]
	bash scripts/install.sh $(VENV)

demo: install  ## distil "a red cube" with loss=ours on the exact offline prior (CPU, < 1 minute)
	$(PY) train.py +experiment=demo

test: install  ## the test suite (CPU only, a few minutes)
	$(PY) -m pytest -q

lint:  ## ruff check + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

tiny-sd: install  ## a tiny random-weight SD pipeline in ./tiny-sd, for trying the SD code path offline
	$(PY) scripts/make_tiny_pipeline.py tiny-sd

mutation: install  ## mutation testing of losses, schedules, trainer, guidance base (slow: see DEVELOPERS.md)
	$(VENV)/bin/pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run && $(VENV)/bin/mutmut results
