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
    from audiotune.models.families import GEMMA3N, PHI4_MULTIMODAL
    from audiotune.models.family import FACTS

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(FAMILIES) | {"voxtral_realtime", "kyutai_speech_to_text", "cosmos3_omni"}
    for name in ("voxtral_realtime", "kyutai_speech_to_text", "cosmos3_omni"):
        assert rows.pop(name)["status"] == "unsupported"
    for name, row in rows.items():
        assert {"name", "model_types", "status", "reason"} <= set(row)
        assert row["status"] == ("blocked" if FAMILIES[name].known_issue else "works")
        assert sorted(row["inferred"] + row["overridden"]) == sorted(FACTS)
    assert rows["af3"]["overridden"] == []  # a conventional checkpoint: every fact inferred
    assert "lm_prefix" in rows[PHI4_MULTIMODAL.name]["overridden"]
    assert rows[GEMMA3N.name]["hooks"] == ["tiny_hook"]


def test_the_known_issue_mechanism_with_a_family_given_one(monkeypatch):
    """One more family is given an issue (OmniASR has one already): the test parameters, the models page and
    `audiotune models` must all treat it as blocked, and only the families with an issue."""
    import dataclasses

    import pytest
    from typer.testing import CliRunner

    import audiotune.models.catalog as catalog
    import audiotune.models.families as families
    from audiotune.cli import app
    from audiotune.errors import ModelFamilyError

    issue = "its processor drops the audio mask in transformers 5.24 (upstream issue 12345)"
    blocked = dataclasses.replace(families.FAMILIES["glmasr"], known_issue=issue, known_error="audio mask")
    registry = {**families.FAMILIES, "glmasr": blocked}
    monkeypatch.setattr(families, "FAMILIES", registry)
    monkeypatch.setattr(catalog, "FAMILIES", registry)

    from tests import test_families

    monkeypatch.setattr(test_families, "FAMILIES", registry)
    marks = {p.id: [m for m in p.marks if m.name == "xfail"] for p in test_families._family_params()}
    (xfail,) = marks["glmasr"]
    assert xfail.kwargs == {"reason": issue, "strict": True, "raises": ModelFamilyError}
    assert sorted(name for name, m in marks.items() if m) == ["glmasr", "omniasr"]

    page = catalog.render_markdown({name: {"outcome": "xfailed" if registry[name].known_issue else "passed"}
                                    for name in registry})
    row = next(line for line in page.splitlines() if line.startswith("| glmasr |"))
    assert "| no | no |" in row and row.endswith(f"| {catalog._OUTCOME_TEXT['xfailed']} |")
    assert f"- **glmasr**: {issue}" in page
    assert catalog.outcome_of(catalog.results_in(page)["glmasr"]) == "xfailed"

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and result.output.count("blocked") == 2
    assert "upstreamissue12345" in "".join(result.output.split())  # the reason, wrapped to the width
    monkeypatch.undo()
    with pytest.raises(AssertionError):  # the registry's own check above fails for a page made with the issue
        for name, family in families.FAMILIES.items():
            assert (catalog.outcome_of(catalog.results_in(page)[name]) == "xfailed") == (family.known_issue is not None)


def test_architectures_without_an_audio_chat_path_are_refused_with_the_upstream_reason(tmp_path):
    """voxtral_realtime, kyutai_speech_to_text (streaming ASR, audio-only processors, time-aligned text) and
    cosmos3_omni (no audio path in transformers) stop at load with the reason that `audiotune models` and
    docs/models.md show; before they had entries they fell through to fact inference."""
    import pytest
    from transformers import AutoConfig
    from typer.testing import CliRunner

    from audiotune.cli import app
    from audiotune.errors import ModelFamilyError
    from audiotune.models.families import family_by_name
    from audiotune.models.loading import load_model

    listed = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"}).output
    page = DOC.read_text()
    # Each upstream fact as read in transformers 5.24 (models/<type>/processing_*.py, modeling_*.py).
    for model_type, fact in (("voxtral_realtime", "num_delay_tokens delay tokens"),
                             ("kyutai_speech_to_text", "through its Mimi codec"),
                             ("cosmos3_omni", "drops the checkpoint's sound towers on load")):
        folder = tmp_path / model_type
        AutoConfig.for_model(model_type).save_pretrained(folder)
        with pytest.raises(ModelFamilyError, match=f"The {model_type} architecture is not supported: .*{fact}"):
            load_model(folder)
        with pytest.raises(ModelFamilyError, match=fact):
            family_by_name(model_type)
        assert f"{model_type} (" in listed and fact in " ".join(listed.split())
        assert f"- **{model_type}** (`{model_type}`" in page and fact in page
