# Two commands do everything on a fresh machine with Python 3.11:
#   make run    create .venv, install, serve the app on the bundled model (http://localhost:7860)
#   make test   lint, check the import contracts and run the whole test suite (what CI runs)
# and, while working: make check   the same with the fast tests only (no servers, browsers, Ray,
# PostgreSQL). `make install` installs requirements-dev.txt: the runtime (requirements.txt,
# what a Space installs), training, benchmarks, the Ray engine and the test tools.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test check bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt

run: install
	$(BIN)/python app.py

test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python -m bench.run
