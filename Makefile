# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv if missing and installs the package with what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
# Tests talk to servers on loopback only: never route those requests through a proxy.
export NO_PROXY := localhost,127.0.0.1,::1
export no_proxy := $(NO_PROXY)

.PHONY: demo test install system-deps bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -e ".[serving,review,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m finegrain_tf.demo --workdir runs/demo

# What the tests need from Debian: Chromium + ChromeDriver (the review app's browser test) and
# PostgreSQL's server programs (the label store's suite). Installed only when missing (CI runs as root).
PG_BIN := $(firstword $(wildcard /usr/lib/postgresql/*/bin))
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || [ -z "$(PG_BIN)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver postgresql; \
	  else \
	    echo "system-deps: run as root (or sudo apt-get install chromium chromium-driver postgresql)"; exit 1; \
	  fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest -n 2 --dist loadfile --timeout 900 --durations 25 tests

clean:
	rm -rf runs build dist *.egg-info
