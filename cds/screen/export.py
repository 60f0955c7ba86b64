"""The files of a FHIR Bulk Data export: a folder of NDJSON files or a manifest.json, plain or gzipped.

https://hl7.org/fhir/uv/bulkdata/export.html#response---complete-status names the manifest's
`output` entries (`type`, `url`). File names in a folder follow the common conventions
`Observation.ndjson`, `1.Observation.ndjson`, `Observation.000.ndjson`, each optionally `.gz`.

    >>> type_of_name("3.Observation.ndjson.gz"), type_of_name("Observation.ndjson")
    ('Observation', 'Observation')
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from cds.errors import InputError

_NDJSON = re.compile(r"\.(?:ndjson|jsonl)(?:\.gz)?$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")


class ExportError(InputError):
    """The export cannot be read at all (no files, a bad manifest); `resource` names the path."""


@dataclass(frozen=True)
class ExportFile:
    """One NDJSON file: where it is, the resource type its name or manifest entry gives, and its size."""

    path: Path
    type: str | None
    size: int

    @property
    def name(self) -> str:
        return self.path.name


def type_of_name(name: str) -> str | None:
    """The resource type in a Bulk Data file name, or None if the name does not say."""
    stem = _NDJSON.sub("", name)
    for part in stem.split("."):
        if _TYPE.match(part):
            return part
    return None


def find_export_files(location: Path) -> list[ExportFile]:
    """The export's files in a fixed order (manifest order, else by name)."""
    if location.is_dir():
        manifest = location / "manifest.json"
        if manifest.is_file():
            return _from_manifest(manifest)
        files = sorted(p for p in location.iterdir() if p.is_file() and _NDJSON.search(p.name))
        if not files:
            raise ExportError("no .ndjson or .ndjson.gz files and no manifest.json", resource=str(location))
        return [ExportFile(path=p, type=type_of_name(p.name), size=p.stat().st_size) for p in files]
    if location.is_file() and location.suffix == ".json":
        return _from_manifest(location)
    if location.is_file() and _NDJSON.search(location.name):
        return [ExportFile(path=location, type=type_of_name(location.name), size=location.stat().st_size)]
    raise ExportError("not a folder, a manifest.json or an .ndjson file", resource=str(location))


def _from_manifest(manifest: Path) -> list[ExportFile]:
    try:
        document = orjson.loads(manifest.read_bytes())
    except OSError as exc:
        raise ExportError(f"cannot read ({exc.strerror})", resource=str(manifest)) from None
    except orjson.JSONDecodeError as exc:
        raise ExportError(f"not valid JSON ({exc})", resource=str(manifest)) from None
    output = document.get("output") if isinstance(document, dict) else None
    if not isinstance(output, list):
        raise ExportError(
            "a Bulk Data manifest needs an `output` list", resource=str(manifest), field="output"
        )
    files = []
    for index, entry in enumerate(output):
        where = f"output[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ExportError("needs a `url` string", resource=str(manifest), field=where)
        kind = entry.get("type")
        path = _local_path(entry["url"], manifest.parent)
        if path is None:
            raise ExportError(
                f"{entry['url']} is not a local file; download the export first, or read it with --engine spark",
                resource=str(manifest),
                field=f"{where}.url",
            )
        if not path.is_file():
            raise ExportError(f"{path} does not exist", resource=str(manifest), field=f"{where}.url")
        files.append(
            ExportFile(
                path=path,
                type=kind if isinstance(kind, str) else type_of_name(path.name),
                size=path.stat().st_size,
            )
        )
    if not files:
        raise ExportError("the manifest lists no output files", resource=str(manifest), field="output")
    return files


def _local_path(url: str, base: Path) -> Path | None:
    """A manifest url as a local path: relative to the manifest, absolute, or file://; None otherwise."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        return None
    path = Path(unquote(url))
    return path if path.is_absolute() else base / path


def read_lines(file: ExportFile) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its newline), blank lines skipped; gzip by its magic bytes.

    A file that breaks off (a truncated or corrupt gzip stream) raises ExportError naming the file and
    the last line read, after every line before it was yielded.
    """
    with file.path.open("rb") as raw:
        magic = raw.read(2)
    number = 0
    opener: Any = gzip.open if magic == b"\x1f\x8b" else open
    with opener(file.path, "rb") as handle:
        try:
            for line in handle:
                number += 1
                stripped = line.strip()
                if stripped:
                    yield number, stripped
        except (OSError, EOFError, zlib.error) as exc:
            raise ExportError(
                f"cannot be read after line {number} ({exc})", resource=str(file.path)
            ) from None
