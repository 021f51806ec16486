# Two commands do everything on a fresh machine with Python 3.11:
#   make run    create .venv, install, serve the app on the bundled model (http://localhost:7860)
#   make test   lint and run the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt

run: install
	$(BIN)/python app.py

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench.run
