# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up by them.

# The Python that builds the venv. PYTHON=... chooses one; by default the first of python3.11,
# python3.12, python3.13 on PATH that runs (a pyenv shim of a version that is not selected does not
# run), else python3. VENV=... names the venv (.ci/run builds one per Python: .venv-3.13, ...).
SUPPORTED_PYTHONS := 3.11 3.12 3.13
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach v,$(SUPPORTED_PYTHONS),$(shell python$(v) -c '' >/dev/null 2>&1 && echo python$(v))) python3)
endif
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(PYVER)
# durable-rules 2.0.28 (sdist only) calls PyEval_CallObject, removed in Python 3.13: there it is
# compiled with the macro mapping it to PyObject_CallObject (same semantics), without pip's wheel cache.
DURABLE_313_CPPFLAGS := -DPyEval_CallObject=PyObject_CallObject

.PHONY: install run test lint typecheck unit bench soak fuzz clean goldens spark-test book docs python

install: $(STAMP)

# Which Python the Makefile uses, for people; `make -s print-PYVER` and friends for scripts.
python:
	@echo "$(PYTHON) (Python $(or $(PYVER),missing)) -> $(VENV)"
print-%:
	@echo '$($*)'

$(STAMP): pyproject.toml
	@test -n "$(PYVER)" || { echo "make: $(PYTHON) does not run; choose a Python 3.11-3.13 with PYTHON=..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else "make: cramp-cds needs Python 3.11, 3.12 or 3.13, and $(PYTHON) is $(PYVER); choose one with PYTHON=...")'
	@echo "make: building $(VENV) with $(PYTHON) (Python $(PYVER))"
	@[ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$(PYVER)" ] \
		|| $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if [ "$(PYVER)" = "3.13" ]; then \
		echo "make: compiling durable-rules for Python 3.13 (CPPFLAGS=$(DURABLE_313_CPPFLAGS))"; \
		CPPFLAGS="$(DURABLE_313_CPPFLAGS)" $(BIN)/pip install -q --no-cache-dir --no-binary durable-rules \
			"$$(grep -o 'durable-rules==[0-9.]*' pyproject.toml)" || exit 1; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	@$(BIN)/python -c 'import durable.engine' || { echo "make: durable-rules does not import on Python $(PYVER)" >&2; exit 1; }
	rm -f $(VENV)/.installed*
	touch $(STAMP)

# The service on the embedded default (SQLite under var/, no authentication, 127.0.0.1 only);
# it prints its URL and a curl call that returns cards for fixtures/hook-request.json.
# PORT=8001 (or CDS_PORT) serves on another port; a busy port stops it before anything is printed.
run: $(STAMP)
	$(BIN)/cds serve --dev $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff check cds tests bench
	$(BIN)/ruff format --check cds tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite in parallel (pytest-xdist): one worker per core, each test file kept on one worker (module
# fixtures start their servers once, and the figure-reporting tests see their whole file), the slowest
# files handed out first (tests/conftest.py SLOW_FILES_FIRST; xdist would order files by test count),
# and the 30 slowest tests listed at the end. PYTEST_ARGS=... adds options (for example PYTEST_ARGS='-n 0').
PYTEST_ARGS ?=
unit: $(STAMP) chromium
	$(BIN)/pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=30 $(PYTEST_ARGS)

# Browser tests (tests/support/browser.py) use Debian's chromium: installed here when missing and we are
# root with apt-get; otherwise those tests skip and say why.
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
		|| echo "make: no /usr/bin/chromium and cannot apt-get it: the browser tests will skip"; }

test: lint typecheck unit

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .pytest_cache .ruff_cache

# The benchmarks of bench/README.md; writes bench/results/latest.md and latest.json (about 20 minutes).
bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.screen

# Regenerate docs/settings.md from the settings object (tests/test_settings_docs.py checks it is current).
docs: $(STAMP)
	$(BIN)/cds settings > docs/settings.md

# Regenerate the compiled-rules golden file after a deliberate rule change; review the diff.
goldens: $(STAMP)
	$(BIN)/cds rules compile > tests/golden/compiled-rules.json

# Coverage-guided fuzzing of the request parser (tests/fuzz/fuzz_request.py) for FUZZ_SECONDS; inputs
# that reach new code go to var/fuzz-corpus, a crashing input to var/fuzz-crash-<hash>.
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	mkdir -p var/fuzz-corpus
	$(BIN)/python tests/fuzz/fuzz_request.py var/fuzz-corpus tests/fuzz/corpus \
		-dict=tests/fuzz/fhir.dict -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=var/fuzz-

# The soak of issue 5: `cds serve` (2 workers) at concurrency 32 for SOAK_SECONDS (600), checked for 5xx,
# wrong answers, RSS growth and lost feedback; writes bench/results/soak.json. PostgreSQL: set CDS_DATABASE_URL;
# JWT on (every call signed, as EHRs do): SOAK_JWT=1.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m bench.soak

# The clinician-readable rule book: one static HTML page (no external assets) at var/rule-book.html.
book: $(STAMP)
	$(BIN)/cds rules book -o var/rule-book.html

# cds screen --engine spark against the local engine (tests/test_screen_spark.py): installs the optional
# extra cramp-cds[spark] (pyspark, pandas, pyarrow; about 450 MB) into .venv first; needs Java 17+.
# `make test` runs the same test only when pyspark is already installed, and skips it otherwise.
spark-test: $(STAMP)
	$(BIN)/pip install -q -e '.[spark]'
	$(BIN)/pytest -q -p no:cacheprovider tests/test_screen_spark.py
