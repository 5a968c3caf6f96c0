# The README's two commands: `make demo` and `make test`. Each creates/updates .venv itself;
# the install is skipped while pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Optional extras installed with the package; CI adds `peers` (TRL) so the peer-equivalence test runs.
EXTRAS ?= dev
# One stamp per set of extras: asking for other extras reinstalls even when pyproject.toml is unchanged.
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/smoothkd run configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/demo_time.py
