"""docs/models.md is generated: it must equal what the registry and its recorded test outcomes render."""

from __future__ import annotations

from pathlib import Path

from audiotune.models.catalog import render_markdown, results_in
from audiotune.models.families import FAMILIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def test_models_page_is_generated_from_the_registry():
    page = DOC.read_text()
    results = results_in(page)
    assert set(results) == set(FAMILIES), "run `make models-doc` after adding a family"
    assert page == render_markdown(results), "docs/models.md is stale or hand-edited: run `make models-doc`"


def test_known_issues_are_the_strict_xfails():
    results = results_in(DOC.read_text())
    for name, family in FAMILIES.items():
        assert (results[name] == "xfailed") == (family.known_issue is not None), name
        assert results[name] != "failed", name


def test_models_command_lists_every_family():
    from typer.testing import CliRunner

    from audiotune.cli import app

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for family in FAMILIES.values():
        assert family.name in result.output
    assert result.output.count("blocked here") == sum(1 for f in FAMILIES.values() if f.known_issue)
