"""Compare two benchmark runs: `python -m bench.compare OLD.json NEW.json` prints each target figure's ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.report import LOWER_IS_BETTER, measured


def main() -> None:
    old, new = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    before, after = measured(old), measured(new)
    print(f"{'figure':28} {'old':>10} {'new':>10} {'new/old':>8}  better?")
    for name in before:
        a, b = before[name], after[name]
        if a is None or b is None:
            print(f"{name:28} {'-':>10} {'-':>10}")
            continue
        ratio = b / a if a else float("nan")
        better = (b < a) if name in LOWER_IS_BETTER else (b > a)
        print(f"{name:28} {a:10.3g} {b:10.3g} {ratio:8.2f}  {'yes' if better else 'no'}")


if __name__ == "__main__":
    main()
