# Two commands do all set-up on a fresh machine with Python 3.11:
#   make book   builds the HTML book into _build/html
#   make test   runs the whole test suite
# Both create .venv from requirements.txt first (once; again when the pins change).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# nbgrader and jupyter-book call other tools of the venv by name.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: book test test-fast sync lint clean venv grade feedback

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Regenerate every derived file from solutions/: student notebooks (chapters/),
# nbgrader source/ and release/ (autograde/), and the generated course_lib modules.
sync: $(STAMP)
	$(BIN)/python -m tools.sync

# The book renders the student notebooks (synced first) with the outputs a correct solution
# produces; execution is cached in _build/.jupyter_cache, so an unchanged rebuild takes seconds.
book: sync
	$(BIN)/python -m tools.book
	@echo "Book built: open file://$(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the slow marks (full nbgrader round trips, the book build, the browser).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Hardened grading of untrusted submissions (autograde/README.md): make grade A=01-queries-keys-values
grade: $(STAMP)
	$(BIN)/python -m autograde grade $(A) $(if $(WORKERS),--workers $(WORKERS))

feedback: $(STAMP)
	$(BIN)/python -m autograde feedback $(A)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf _build book
