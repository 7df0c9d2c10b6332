# The two commands of the README. Both install what they need into the active Python environment.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-dev test demo

install:
	$(PIP) install -q -r requirements.txt

install-dev: install
	$(PIP) install -q -r requirements-dev.txt

test: install-dev
	$(PYTHON) -m pytest -q

demo: install-dev
	$(PYTHON) demo.py
