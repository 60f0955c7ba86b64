"""docs/settings.md is the settings object's own table: every setting described, and the file current."""

from __future__ import annotations

from click.testing import CliRunner

from cds.cli import main
from cds.settings import Settings, settings_document
from tests.conftest import ROOT


def test_every_setting_has_a_description() -> None:
    undescribed = [name for name, info in Settings.model_fields.items() if not info.description]
    assert undescribed == [], "add a docstring under each setting in cds/settings.py"


def test_docs_settings_md_is_current() -> None:
    document = settings_document()
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == document, (
        "docs/settings.md is out of date: run `make docs`"
    )
    for name in Settings.model_fields:
        assert f"| `CDS_{name.upper()}` |" in document
    assert str(ROOT) not in document  # no machine's path in the docs


def test_cds_settings_prints_the_document() -> None:
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 0, result.output
    assert result.output == settings_document()
