"""YAML reading with libyaml's C parser when PyYAML was built with it (about ten times faster).

The rule pack is read at every worker start; the pure-Python parser made that the largest part of
start-up once the pack grew. Both loaders build the same plain data from the same safe tag set.
"""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """Parse one YAML document with the safe tag set; raises yaml.YAMLError as yaml.safe_load does."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader (C or Python), never the full loader
