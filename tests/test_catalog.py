"""docs/models.md is generated: it must equal what the registry and its recorded test outcomes render."""

from __future__ import annotations

from pathlib import Path

from audiotune.models.catalog import outcome_of, render_markdown, results_in
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
        assert (outcome_of(results[name]) == "xfailed") == (family.known_issue is not None), name
        assert outcome_of(results[name]) != "failed", name


def test_models_command_lists_every_family():
    from typer.testing import CliRunner

    from audiotune.cli import app

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for family in FAMILIES.values():
        assert family.name in result.output
    assert result.output.count("blocked") == sum(1 for f in FAMILIES.values() if f.known_issue)


def test_models_fits_80_columns_and_says_what_is_inferred():
    from typer.testing import CliRunner

    from audiotune.cli import app

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    assert "every other fact is inferred" in result.output
    for family in FAMILIES.values():
        assert family.hub_id in result.output


def test_models_json_lists_status_reason_and_facts():
    import json

    from typer.testing import CliRunner

    from audiotune.cli import app
    from audiotune.models.families import FACTS, GEMMA3N, PHI4_MULTIMODAL

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(FAMILIES)
    for name, row in rows.items():
        assert {"name", "model_types", "status", "reason"} <= set(row)
        assert row["status"] == ("blocked" if FAMILIES[name].known_issue else "works")
        assert sorted(row["inferred"] + row["overridden"]) == sorted(FACTS)
    assert rows["af3"]["overridden"] == []  # a conventional checkpoint: every fact inferred
    assert "lm_prefix" in rows[PHI4_MULTIMODAL.name]["overridden"]
    assert rows[GEMMA3N.name]["hooks"] == ["tiny_hook"]
