# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up by them.
PYTHON ?= $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' 2>/dev/null && echo python3.12 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck unit bench soak fuzz clean goldens

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "cramp-cds needs Python 3.11 or 3.12"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The service on the embedded default (SQLite under var/, no authentication, 127.0.0.1 only);
# it prints its URL and a curl call that returns cards for fixtures/hook-request.json.
run: $(STAMP)
	$(BIN)/cds serve --dev

lint: $(STAMP)
	$(BIN)/ruff check cds tests bench
	$(BIN)/ruff format --check cds tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# The benchmarks of bench/README.md; writes bench/results/latest.md and latest.json (about 20 minutes).
bench: $(STAMP)
	@command -v hey >/dev/null || { echo "make bench: installing the load tool hey (apt-get)"; apt-get install -y -q hey; }
	$(BIN)/python -m bench.run

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
# wrong answers, RSS growth and lost feedback; writes bench/results/soak.json. PostgreSQL: set CDS_DATABASE_URL.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m bench.soak
