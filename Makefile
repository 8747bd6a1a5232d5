# Each target sets up what it needs: a .venv with fundwatch and its test tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fundwatch demo

# Two test processes (pytest-xdist): the suite's time is mostly its live tests waiting on
# workers (a group's join, a killed worker's session running out), which two processes
# overlap even on two cores — measured, 579 s alone and 304 s as two. Each process
# starts its own embedded broker; every test keeps to its own topics, consumer group,
# directory and PostgreSQL schema. A single test: `.venv/bin/python -m pytest tests/…`.
# The inbox's browser test drives the system Chromium (no browser download). Where it
# is missing, install Debian's package if we can (root with apt-get); never fail the
# target for it: the test then skips, saying why.
test: $(STAMP)
	-@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium for the browser test ..."; \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	    echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium not found and not installable here (needs root and apt-get):" \
	    "the browser test will skip"; fi
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/fundwatch bench

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff && $(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-out fundwatch-data *.egg-info
