"""What users see of the registry: ``audiotune models`` (80 columns, or ``--json``) and ``docs/models.md``.

Why generated: a hand-written support table drifts from the code. Status and overrides come from each
:class:`~audiotune.models.family.Family` entry of the registry (``families.py``); which facts a family infers is the
complement of what it overrides (``family.FACTS``); the "tested" column and the inferred values (audio token,
rate, tokens per 10 s) come from the outcome of ``tests/test_families.py`` (``make models-doc`` runs it with
``--family-results`` and renders this page). The outcomes are embedded in the page, and a test re-renders the page
from the registry and those outcomes, so an edit to either the registry or the page alone fails CI.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

from .families import FAMILIES
from .family import FACTS, Family
from .unsupported import UNSUPPORTED, Unsupported

RESULTS_MARKER = "family-test-results:"
_OUTCOME_TEXT = {"passed": "passes", "xfailed": "strict xfail", "failed": "FAILS", None: "not run"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the table cell


def _outcome(result) -> str | None:
    return result.get("outcome") if isinstance(result, dict) else result


def family_info(family: Family) -> dict[str, Any]:
    """One family as ``audiotune models --json`` prints it (no checkpoint needed: nothing is built)."""
    overridden = list(family.overridden)
    return {
        "name": family.name,
        "model_types": list(family.model_types),
        "status": "blocked" if family.known_issue else "works",
        "reason": family.known_issue,
        "main_checkpoint": family.hub_id,
        "task": family.task,
        "max_audios": family.max_audios,  # clips a conversation may hold
        "vllm": family.vllm_supported,
        "vllm_tested": family.vllm_tested,
        "vllm_note": family.vllm_note,
        "vllm_lora": family.vllm_lora,  # vLLM applies audiotune's LoRA adapters (else: merge first)
        "modality_adapter": family.modality_adapter,  # the LoRA the checkpoint ships for audio (folded on load)
        "valid_frames": family.valid_frames,  # how far features and the tower run (models/encoder_frames.py)
        "public_record": family.public_record,  # the shipped files against the real checkpoint's public record
        "overridden": overridden,
        "inferred": [f for f in FACTS if f not in overridden],
        "hooks": [h for h in ("tiny_hook", "model_inputs") if getattr(family, h)],
    }


def unsupported_info(refused: Unsupported) -> dict[str, Any]:
    """A refused architecture in ``--json``: the same keys as a family's, status "unsupported"."""
    return {"name": refused.name, "model_types": list(refused.model_types), "status": "unsupported",
            "reason": refused.reason, "main_checkpoint": refused.hub_id, "task": None, "max_audios": None,
            "vllm": False, "vllm_tested": False, "vllm_note": None, "vllm_lora": False,
            "modality_adapter": None,
            "public_record": None, "overridden": [], "inferred": [],
            "hooks": []}


def families_json() -> str:
    return json.dumps([*(family_info(f) for f in FAMILIES.values()),
                       *(unsupported_info(u) for u in UNSUPPORTED.values())], indent=2)


def render_table(width: int = 80) -> str:
    """The registry as plain text that fits ``width`` columns: per family its name, model types and status, then
    its main checkpoint and what the entry overrides (everything else is inferred from the checkpoint)."""
    name_w = max(len(f.name) for f in FAMILIES.values())
    type_w = max(10, width - name_w - len("blocked") - 4)
    lines = [f"{'family':<{name_w}}  {'model_type':<{type_w}}  status",
             "  main checkpoint · overrides (every other fact is inferred)", "-" * width]
    for family in FAMILIES.values():
        info = family_info(family)
        types = ", ".join(family.model_types)
        if len(types) > type_w:
            types = types[: type_w - 1] + "…"
        lines.append(f"{family.name:<{name_w}}  {types:<{type_w}}  {'blocked' if family.known_issue else 'works'}")
        overrides = ", ".join([*info["overridden"], *info["hooks"]]) or "none"
        lines += textwrap.wrap(f"{family.hub_id} · files {family.public_record} · overrides: {overrides}", width,
                               initial_indent="  ",
                               subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    for family in FAMILIES.values():
        if family.known_issue:
            lines += textwrap.wrap(f"{family.name}: {family.known_issue}", width, subsequent_indent="  ")
    for refused in UNSUPPORTED.values():
        lines += textwrap.wrap(f"{refused.name} ({refused.hub_id}): unsupported, {refused.reason}", width,
                               subsequent_indent="  ", break_on_hyphens=False)
    lines += textwrap.wrap("A checkpoint of an architecture not listed works when its facts can be inferred "
                           "(pass --model); `audiotune models --json` lists inferred and overridden facts.", width)
    return "\n".join(lines)


def _vllm_status(family: Family) -> str:
    if family.vllm_tested:
        return "vLLM, tested"
    return "vLLM (untested)" if family.vllm_supported else "not served by vLLM"


def family_row(family: Family, result) -> dict[str, str]:
    works = family.known_issue is None
    vllm = ["vLLM"] if family.vllm_tested else ["vLLM (untested)"] if family.vllm_supported else []
    serve = " + ".join([*(["transformers"] if works else []), *vllm]) or "no"
    outcome = _outcome(result)
    return {
        "family": family.name,
        "model_type": ", ".join(family.model_types),
        "main checkpoint": family.hub_id or "",
        "task": family.task or "any",
        "LoRA (LM only)": "yes" if works else "no",
        "merge + pipeline": "yes" if works else "no",
        "serve": serve,
        "public record": family.public_record,
        "tested": _OUTCOME_TEXT.get(outcome, outcome or "not run"),
    }


def render_markdown(results: dict[str, Any]) -> str:
    """The whole models page for the given test outcomes (family name → outcome, or a dict with ``outcome`` and
    the facts the test inferred: ``audio_token``, ``sampling_rate``, ``window_seconds``, ``tokens_10s``)."""
    rows = [family_row(f, results.get(f.name)) for f in FAMILIES.values()]
    header = list(rows[0])
    lines = [
        "# Supported models",
        "",
        "<!-- Generated by `make models-doc` from audiotune/models/families.py and the outcomes of",
        "     tests/test_families.py. Do not edit by hand: tests/test_catalog.py re-renders it. -->",
        f"<!-- {RESULTS_MARKER} {json.dumps(dict(sorted(results.items())), sort_keys=True)} -->",
        "",
        "Every family below is one entry in `audiotune/models/families.py` holding only what cannot be inferred from",
        "the checkpoint; its tiny checkpoint comes from the one generic builder (`models/tiny.py`). Its end-to-end",
        "test builds the tiny checkpoint, trains ten LoRA steps on one fixed batch and requires its loss to fall",
        "(labels on the assistant span only, no LoRA in the audio encoder or another tower), requires the adapter's",
        "logits and non-empty greedy answers to differ from the base model's, generates (batched = one at a time),",
        "reloads the adapter, merges, runs the `audio-text-to-text` pipeline and serves one request",
        "(`pytest -k families`); `audiotune tiny --family NAME` builds at both presets.",
        "`audiotune plan --model <main checkpoint>` works offline for each (the published architecture ships with",
        "audiotune). A checkpoint of an architecture not listed works with no entry when its facts can be inferred.",
        "",
        "*public record*: how the shipped config, tokenizer and chat template compare with what is public about the",
        "real checkpoint (transformers' conversion scripts and tests, vLLM's examples, vendors' repositories, each",
        "cited in the files' `_comment`). \"not verified\": no public copy was found, the files are reconstructed;",
        "\"partly verified\": the `tiny.json` comment names what is not. *vLLM (untested)*: vLLM has model code for",
        "the family and `serve --backend vllm` accepts it, but no test here starts vLLM on it.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_cell(row[h]) for h in header) + " |" for row in rows]
    notes = [(f.name, f.known_issue) for f in FAMILIES.values() if f.known_issue]
    if notes:
        lines += ["", "## Known issues with the pinned dependencies", ""]
        lines += [f"- **{name}**: {issue}" for name, issue in notes]
    shipped = [f for f in FAMILIES.values() if f.modality_adapter is not None]
    lines += ["", "## Adapters the checkpoints ship", "",
              "Some real checkpoints carry a LoRA that their audio path expects: "
              + "; ".join(f"**{f.name}** in `{f.modality_adapter or '.'}/`" for f in shipped) + " (when present:",
              "Granite Speech 4.1 plus ships none). audiotune **folds** it into the base weights when it loads the",
              "checkpoint (`models/loading.py`, `fold_modality_adapter`), then adds your LoRA on top: training,",
              "evaluation, `merge` (the merged folder holds both and no adapter files), the pipeline and the native",
              "server all run the model as the real one runs on audio, with no nested adapters. What differs from",
              "upstream: a text-only turn also runs through the audio LoRA (Granite's `generate` and Phi-4's docs",
              "apply it only with audio), and Phi-4's `vision-lora/` is not applied. With peft 0.21, transformers",
              "5.24's `set_adapter`/`enable_adapters`/`disable_adapters` need peft >= 0.22, so the upstream toggle",
              "itself raises here; folding needs none of them. `serve`/`infer --backend vllm` pass the checkpoint's",
              "LoRA as vLLM's `--default-mm-loras` (applied to each request with audio) and refuse to stack an",
              "audiotune adapter on it (one LoRA per request): merge first and serve the merged folder.",
              "The tiny checkpoints carry such an adapter in the real layout (random, rank 8)."]
    lines += ["", "## vLLM", "",
              "What vLLM does not do for a family it has model code for, with the upstream reason:", ""]
    lines += [f"- **{f.name}** ({_vllm_status(f)}): {f.vllm_note}." for f in FAMILIES.values() if f.vllm_note]
    lines += ["", "## Architectures not supported", "",
              "transformers ships these with an audio side; loading one stops with the reason below.", ""]
    lines += [f"- **{u.name}** (`{'`, `'.join(u.model_types)}`, {u.hub_id}): {u.reason}." for u in UNSUPPORTED.values()]
    lines += ["", "## Inferred and overridden facts", "",
              "Inferred facts are read from the checkpoint (processor, feature extractor, chat template, module tree);",
              "the values below are what the family test inferred from the tiny checkpoint, which carries the",
              "published processor files.", "",
              "| family | audio token | rate | window | audio tokens for 10 s | overridden (rest inferred) |",
              "|---|---|---|---|---|---|"]
    for f in FAMILIES.values():
        facts = results.get(f.name) if isinstance(results.get(f.name), dict) else {}
        info = family_info(f)
        overridden = ", ".join(f"`{o}`" for o in [*info["overridden"], *info["hooks"]]) or "none"
        token = facts.get("audio_token")
        lines.append(
            f"| {f.name} | {'`' + _cell(token) + '`' if token else '?'} | "
            f"{str(facts['sampling_rate']) + ' Hz' if facts.get('sampling_rate') else '?'} | "
            f"{format(facts['window_seconds'], 'g') + ' s' if facts.get('window_seconds') else '?'} | "
            f"{facts.get('tokens_10s', '?')} | {overridden} |")
    return "\n".join(lines) + "\n"


def results_in(markdown: str) -> dict[str, Any]:
    """The test outcomes a rendered page was made from."""
    match = re.search(rf"{RESULTS_MARKER} (\{{.*\}}) -->", markdown)
    return json.loads(match.group(1)) if match else {}


def outcome_of(result) -> str | None:
    return _outcome(result)
