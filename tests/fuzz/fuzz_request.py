"""atheris target: raw request bytes -> load_json -> read_hook_request -> Evaluator.evaluate_document.

Any exception that is not a cds.errors.CdsError is a crash. Run it (libFuzzer flags after the corpus
directories; the first directory receives new inputs):

    .venv/bin/python tests/fuzz/fuzz_request.py var/fuzz-corpus tests/fuzz/corpus \\
        -dict=tests/fuzz/fhir.dict -max_total_time=600

`make fuzz` does that for FUZZ_SECONDS (default 600); tests/fuzz/test_fuzz.py runs it for ~10 s.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["cds"]):
    from cds.errors import CdsError
    from cds.evaluation import Evaluator
    from cds.intake import is_hook_request, load_json, read_hook_request
    from cds.rulepack import load_rule_pack

RULES = Path(__file__).resolve().parent.parent.parent / "rules"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EVALUATOR = Evaluator(load_rule_pack(RULES), new_id=lambda: "00000000-0000-4000-8000-000000000001")


def test_one_input(data: bytes) -> None:
    try:
        document = load_json(data)
        if is_hook_request(document):
            read_hook_request(document)
        EVALUATOR.evaluate_document(document, now=NOW)
    except CdsError:
        pass  # refused with a status and a message naming what is wrong: the intended outcome


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
