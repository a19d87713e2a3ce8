# Virtual Cell Explorer — the two quick-start commands:
#   make demo   set up .venv, generate a demo atlas, build it, open the dashboard
#   make test   set up .venv (with test extras and Chromium), run the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
PORT   ?= 8501

.PHONY: demo test setup setup-dev browser clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH)        # pinned first: a bare torch requirement would pull CUDA wheels
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

browser:  ## Debian's Chromium for the real-browser tests (Playwright drives it; no browser download)
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

demo: setup
	$(VENV)/bin/vcell demo --port $(PORT)

test: setup-dev browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo .pytest_cache
