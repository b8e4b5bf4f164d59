# Set-up and the two jobs.  `make benchmark` runs the main job, `make test` the tests;
# both create the virtual environment in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup benchmark demo test bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

benchmark: setup
	$(VENV)/bin/isnet benchmark --out runs/benchmark

demo: setup
	$(VENV)/bin/isnet demo --out runs/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/explain_speed.py
	$(PY) benchmarks/training_speed.py
