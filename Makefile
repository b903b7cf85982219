# Two commands do all set-up on a fresh machine:
#   make lab    the whole course, headless, into reports/ (PRESET=full for realistic sizes)
#   make test   unit tests plus every notebook executed with the ci preset
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PRESET ?= ci
ONLY   ?=
STAMP  := $(VENV)/.installed

.PHONY: setup lab test test-fast lint report clean-reports

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"the course needs Python 3.11, found {sys.version.split()[0]}: run make PYTHON=/path/to/python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .   # labkit itself, editable: the pins above are its dependencies
	rm -f $(VENV)/lib/python3.11/site-packages/labkit-course.pth   # left by older set-ups
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	$(PY) -m labkit course --preset $(PRESET) $(if $(ONLY),--only $(ONLY))

test: setup
	$(PY) -m ruff check labkit tests
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not notebooks"

report: setup
	$(PY) -m labkit report

clean-reports:
	rm -rf reports
