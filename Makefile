# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
# `make demo REAL=1` uses ../shared/data (real tokenizer and pretraining sample) instead of the embedded corpus.
# The project needs Python 3.11: python3.11 when it is on PATH, else python3.
PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# The CPU wheel first: any other torch pulls several GB of CUDA libraries.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[torch,dev,mds]"
	# MDS shard readers (format: mds); --no-deps: the package pins transformers < 5 for parts never used here.
	$(PY) -m pip install -q --no-deps mosaicml-streaming==0.13.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py $(if $(REAL),--real)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) runs results
