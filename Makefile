# Quick start: `make convert` (the whole catalogue) and `make test`. Both create .venv if needed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: setup convert test validate lint clean

setup: $(STAMP)

# torch is pinned to the release on this machine's disk (any other is a multi-GB download).
# TensorFlow is an extra (the package works with tensorflow or tensorflow-cpu): CPU here.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[tensorflow-cpu,convert,test]'
	touch $(STAMP)

convert: $(STAMP)
	$(PY) scripts/convert_all.py $(ARGS)

# Two pytest-xdist workers (conftest.py pins each to one thread); loadgroup keeps the tests of
# one catalogue configuration in one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup $(ARGS)

validate: $(STAMP)
	$(PY) scripts/validate_all.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check zoo scripts tests

clean:
	rm -rf $(VENV) .pytest_cache
