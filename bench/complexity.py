"""Complexity benchmark: evaluation cost against the number of resources, to show it grows linearly.

    python -m bench.complexity      # measures, adds the section to bench/results/latest.json and .md

Two shapes of patient from 10 to 20,000 resources: the generated Synthea-like record of
bench/patients.py (most resources are not read by the rules and are dropped before validation), and
the worst case of issue 9, a prefetch whose Conditions are all active and all read (cramp and varicose
veins). Each size is parsed and evaluated in process (load_json -> cards) `repeats` times; the figure
is the median CPU time of this process (steadier than wall time on a shared machine) and the cost per
resource. Linear growth shows as a flat cost per resource; the report gives the ratio of the largest
size's cost per resource to that at 1,000.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from bench.patients import NOW, as_hook_request, make_patient
from cds.evaluation import Evaluator
from cds.intake import load_json
from cds.rulepack import load_rule_pack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIZES = (10, 100, 1000, 5000, 20000)


def active_conditions(patient: str, count: int) -> dict[str, Any]:
    """A searchset of `count` active Conditions the rules read (cramp and varicose veins, alternating)."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": f"c{i}",
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active",
                            }
                        ]
                    },
                    "code": {
                        "coding": [
                            {"system": "http://snomed.info/sct", "code": ("55300003", "72866009")[i % 2]}
                        ]
                    },
                    "subject": {"reference": f"Patient/{patient}"},
                }
            }
            for i in range(count)
        ],
    }


def read_conditions(count: int) -> dict[str, Any]:
    """A patient-view request whose prefetch holds `count` active Conditions the rules read."""
    request = as_hook_request(make_patient(4))
    request["prefetch"]["conditions"] = active_conditions(request["context"]["patientId"], count)
    return request


SHAPES = {
    "generated record (mostly unread)": lambda n: make_patient(max(n, 4)),
    "all read Conditions (worst case)": read_conditions,
}


def cpu_seconds(evaluator: Evaluator, raw: bytes, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        began = time.process_time()
        evaluator.evaluate_document(load_json(raw, max_depth=64), now=NOW)
        samples.append(time.process_time() - began)
    return samples


def bench_complexity(*, sizes: tuple[int, ...] = SIZES, repeats: int = 3) -> list[dict[str, Any]]:
    evaluator = Evaluator(load_rule_pack(ROOT / "rules"))
    rows = []
    for shape, build in SHAPES.items():
        for size in sizes:
            raw = orjson.dumps(build(size))
            cpu_seconds(evaluator, raw, 1)  # warm-up
            samples = cpu_seconds(evaluator, raw, repeats)
            median = statistics.median(samples)
            rows.append(
                {
                    "shape": shape,
                    "resources": size,
                    "body_kb": round(len(raw) / 1024, 1),
                    "repeats": repeats,
                    "cpu_ms": round(median * 1000, 2),
                    "cpu_ms_spread": [round(min(samples) * 1000, 2), round(max(samples) * 1000, 2)],
                    "us_per_resource": round(median / size * 1e6, 1),
                }
            )
    return rows


def growth(rows: list[dict[str, Any]], shape: str) -> float | None:
    """Cost per resource at the largest size over that at 1,000 (1.0 is linear)."""
    mine = {r["resources"]: r for r in rows if r["shape"] == shape}
    if 1000 not in mine or len(mine) < 2:
        return None
    largest = mine[max(mine)]
    return float(largest["us_per_resource"] / mine[1000]["us_per_resource"])


def render_complexity(rows: list[dict[str, Any]], when: str = "") -> list[str]:
    lines = [
        "## Evaluation cost against the number of resources (issue 9)",
        "",
        "In process, load_json -> cards, CPU time of the process (median of the repeats, min–max in",
        "brackets)." + (f" Measured {when}." if when else ""),
        "",
        "| shape | resources | body kB | CPU ms | µs per resource |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["cpu_ms_spread"]
        lines.append(
            f"| {r['shape']} | {r['resources']} | {r['body_kb']} | {r['cpu_ms']} ({low}–{high}) | {r['us_per_resource']} |"
        )
    lines.append("")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        ratio = growth(rows, shape)
        if ratio is not None:
            lines.append(f"- {shape}: cost per resource at the largest size is {ratio:.2f}× that at 1,000.")
    lines.append("")
    return lines


def main() -> None:
    from datetime import UTC, datetime

    rows = bench_complexity()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    latest = RESULTS / "latest.json"
    report = json.loads(latest.read_text()) if latest.exists() else None
    if report is not None:
        report["complexity"] = rows
        report["complexity_when"] = when
        latest.write_text(json.dumps(report, indent=1))
        from bench.report import render
        from bench.run import TARGETS

        (RESULTS / "latest.md").write_text(render(report, TARGETS))
    print("\n".join(render_complexity(rows, when)))


if __name__ == "__main__":
    main()
