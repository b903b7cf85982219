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

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"the course needs Python 3.11, found {sys.version.split()[0]}: run make PYTHON=/path/to/python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "labkit-course.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	$(PY) -m labkit course --preset $(PRESET) $(if $(ONLY),--only $(ONLY))

test: setup
	$(PY) -m ruff check labkit tests
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not notebooks"

report: setup
	$(PY) -m labkit report

clean-reports:
	rm -rf reports
