# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv if missing and installs the package with what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -e ".[serving,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m finegrain_tf.demo --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests

clean:
	rm -rf runs build dist *.egg-info
