"""`audiotune ui`: the pure helpers (fast), then the page itself in headless Chromium (slow).

The browser tests launch the app on 127.0.0.1 on a free port with a micro AF3, a 3-step micro
adapter and an evaluation run, all inside one root folder, and drive it with Playwright the way a
person would. Set AUDIOTUNE_UI_SCREENSHOTS=docs/images to refresh the screenshots in docs/ui.md.
"""

from __future__ import annotations

import enum
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotune.train_config import TrainConfig
from audiotune.errors import ConfigError, PathOutsideRootError
from audiotune.ui.paths import Root
from tests.conftest import tone

# --- pure helpers ---------------------------------------------------------------------------------------------


def test_root_confines_paths_and_symlinks(tmp_path):
    root_dir = tmp_path / "root"
    (root_dir / "runs").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root_dir / "escape").symlink_to(tmp_path / "secret")
    root = Root(root_dir)
    assert root.confine("runs") == (root_dir / "runs").resolve()
    assert root.confine(str(root_dir / "runs")) == (root_dir / "runs").resolve()
    for outside in ("/etc", "../secret", "runs/../../secret", "escape"):
        with pytest.raises(PathOutsideRootError, match="outside the UI's root folder"):
            root.confine(outside)
    with pytest.raises(PathOutsideRootError, match="no such file"):
        root.confine("runs/missing")
    assert root.confine("runs/new", must_exist=False) == (root_dir / "runs" / "new").resolve()
    assert root.local_or_hub("OpenSound/AudioCaps", "dataset") == "OpenSound/AudioCaps"  # a Hub id, no local file
    assert root.local_or_hub("runs", "dataset") == str((root_dir / "runs").resolve())
    with pytest.raises(PathOutsideRootError):
        root.local_or_hub("../secret/*.parquet", "dataset")
    assert root.audio_item({"bytes": b"RIFF", "path": "/etc/x.wav"}, "clip")["bytes"] == b"RIFF"  # embedded
    with pytest.raises(PathOutsideRootError):
        root.audio_item({"bytes": None, "path": "/etc/hosts"}, "clip")


def test_train_form_is_generated_from_the_config():
    import dataclasses

    from audiotune.ui.trainform import HIDDEN, TRAINER_FIELDS, default_values, form_spec, form_fields, groups

    from audiotune.config import flat_fields

    specs = {s.name: s for s in form_spec()}
    fields = {f.name: f for f in flat_fields(TrainConfig)}  # the run's, the parts' and the Trainer's: the CLI's flags
    assert set(specs) == set(form_fields()) and not set(specs) & set(HIDDEN)
    assert set(TRAINER_FIELDS) <= set(specs) and {"model", "dataset", "output_dir", "lora_r", "method"} <= set(specs)
    defaults = TrainConfig().user_values()  # what a run with no option set records
    assert all(specs[n].default == defaults.get(n, fields[n].default) for n in specs)
    assert all(specs[n].help == fields[n].metadata["help"] for n in specs)  # the field's help, as --help shows it
    assert list(groups())[:3] == ["run", "data", "adaptation"]
    assert specs["lora_r"].group == "adaptation" and specs["learning_rate"].kind == "float"
    assert specs["task"].kind == "choice" and "asr" in specs["task"].choices  # from the Literal type
    assert specs["audio_cache"].choices == ("memory", "disk", "off")
    assert specs["method"].choices == ("sft", "grpo", "dpo") and "sft |" not in specs["method"].help
    assert specs["optim"].kind == "choice" and "adafactor" in specs["optim"].choices  # from transformers' enum
    assert "regex" in specs["lora_targets"].help
    assert "auto-detected" in specs["audio_column"].help
    assert specs["train_take"].optional and default_values()["labels"] == ""


def test_form_values_become_the_validated_config(tmp_path):
    from audiotune.ui.trainform import config_from_form, default_values

    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    root = Root(tmp_path)
    values = {**default_values(), "model": "model", "dataset": "data", "output_dir": "runs/x", "max_steps": 3.0,
              "eval_split": "none", "train_take": "", "lora_targets": "q_proj, v_proj", "labels": "a,b"}
    cfg = config_from_form(values, root)
    assert cfg.model == str(tmp_path.resolve() / "model") and cfg.output_dir == str(tmp_path.resolve() / "runs/x")
    assert cfg.data.dataset == str(tmp_path.resolve() / "data")
    assert cfg.max_steps == 3 and isinstance(cfg.max_steps, int)
    assert cfg.eval_split is None and cfg.train_take is None  # 'none' as on the CLI; empty is None
    assert cfg.adapter.lora_targets == ["q_proj", "v_proj"] and cfg.data.labels == ["a", "b"]
    assert config_from_form({**values, "lora_targets": r".*\.q_proj"}, root).adapter.lora_targets == r".*\.q_proj"
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):  # validate(), the CLI's message
        config_from_form({**values, "per_device_train_batch_size": 0}, root)
    with pytest.raises(ConfigError, match="No model given: pass --model"):
        config_from_form({**values, "model": ""}, root)
    with pytest.raises(PathOutsideRootError):
        config_from_form({**values, "output_dir": "../elsewhere"}, root)
    with pytest.raises(ConfigError, match="whole number"):
        config_from_form({**values, "max_steps": 2.5}, root)


def test_a_saved_run_config_refills_the_form_for_resume(tmp_path):
    """Resume reloads the run's YAML (enum fields come back as enums) and refills the form: it must validate."""
    from audiotune.config import flat_values
    from audiotune.train_config import TrainConfig
    from audiotune.ui.jobs import saved_config
    from audiotune.ui.trainform import config_from_form, default_values, display_value, form_spec

    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    root = Root(tmp_path)
    values = {**default_values(), "model": "model", "dataset": "data", "output_dir": "runs/x", "max_steps": 7,
              "lr_scheduler_type": "cosine"}
    cfg = config_from_form(values, root)
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    cfg.to_yaml(run / "ui_config.yaml")
    loaded = saved_config(run)
    assert isinstance(loaded, TrainConfig) and isinstance(loaded.lr_scheduler_type, enum.Enum)  # an enum again
    saved = flat_values(loaded)
    again = config_from_form({s.name: display_value(s, saved[s.name]) for s in form_spec()}, root)
    assert again.user_values() == cfg.user_values()


def test_live_log_callback_and_curves(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs-root") / "run"  # alone under its root: list_runs sees only it
    tmp_path.mkdir()
    from transformers import TrainerState

    from audiotune.callbacks import LiveLogCallback
    from audiotune.ui.jobs import curve_points, list_runs, read_history

    state = TrainerState(global_step=2, max_steps=4)
    state.log_history = [{"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2},
                         {"eval_loss": 2.7, "eval_gen_CIDEr-D": 0.1, "eval_gen_vocabulary": 9.0, "step": 2}]
    callback = LiveLogCallback(tmp_path)
    callback.on_log(None, state, None)
    history = read_history(tmp_path)
    assert history["global_step"] == 2 and history["max_steps"] == 4 and not history["finished"]
    points = curve_points(history["log_history"])
    assert {(p["series"], p["step"]) for p in points} == {("train loss", 1), ("train loss", 2), ("eval loss", 2),
                                                           ("CIDEr-D", 2)}
    callback.on_train_end(None, state, None)
    callback.on_log(None, state, None)  # the final evaluation logs after the loop: still finished
    assert read_history(tmp_path)["finished"]
    TrainConfig.from_flat(model="m", dataset="d", output_dir=str(tmp_path)).to_yaml(tmp_path / "run_config.yaml")
    runs = list_runs(tmp_path.parent)
    assert [r["run"] for r in runs] == [tmp_path] and runs[0]["last_loss"] == 2.5


def _predictions(folder: Path, task: str = "asr") -> None:
    rows = [("a", "base", "the cat", 0.5), ("a", "tuned", "a cat", 0.2), ("b", "base", "dog", 1.0),
            ("b", "tuned", "the dog", 0.9), ("c", "base", "bird", 0.0), ("c", "tuned", "bird", None)]
    with (folder / "predictions.jsonl").open("w") as handle:
        for clip, model, text, wer in rows:
            handle.write(json.dumps({"model": model, "id": clip, "prompt": "Transcribe.", "references": [f"ref {clip}"],
                                     "prediction": text, "scores": {} if wer is None else {"WER": wer}}) + "\n")
    (folder / "metrics.json").write_text(json.dumps({"task": task, "models": {"base": {"WER": 0.5},
                                                                              "tuned": {"WER": 0.55}}}))


def test_run_folder_rows_sort_worst_first_and_filter(tmp_path):
    from audiotune.ui.runs import filter_samples, load_run, sort_samples

    _predictions(tmp_path)
    run = load_run(tmp_path)
    assert run.models == ["base", "tuned"] and run.metrics_rows() == [["WER", 0.5, 0.55]]
    assert run.samples[0].answers == {"base": "the cat", "tuned": "a cat"}
    # WER: worst is the highest; an unscored clip goes last.
    assert [s.id for s in sort_samples(run.samples, "tuned", "WER")] == ["b", "a", "c"]
    assert [s.id for s in sort_samples(run.samples, "tuned", "WER", worst_first=False)] == ["a", "b", "c"]
    assert [s.id for s in filter_samples(run.samples, "DOG")] == ["b"]
    with pytest.raises(Exception, match="no predictions.jsonl"):
        load_run(tmp_path / "nothing")


def test_conversation_puts_the_clip_in_the_first_user_turn():
    from audiotune.ui.playground import conversation

    clip = tone(0.5)
    history = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
               {"role": "assistant", "content": "A tone."}, {"role": "user", "content": "Higher or lower?"}]
    messages = conversation(history, clip, system_prompt="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"][0]["audio"] is clip and messages[1]["content"][1]["text"] == "What is it?"
    assert [p["type"] for p in messages[3]["content"]] == ["text"]
    with pytest.raises(ConfigError, match="Add a clip first"):
        conversation(history, None)
    with pytest.raises(ConfigError, match="last turn must be yours"):
        conversation(history[:2], clip)


def test_import_audiotune_does_not_load_the_ui():
    code = ("import sys, audiotune, audiotune.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('gradio', 'audiotune.ui'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the remote backend against a real server -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_remote_backend_streams_from_an_audiotune_server(micro_af3):
    import threading

    import uvicorn

    from audiotune.serve.app import create_app
    from audiotune.engines.native import NativeEngine as Engine
    from audiotune.ui.playground import ChatSettings, RemoteBackend, conversation

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Engine(str(micro_af3), served_name="micro")), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        backend = RemoteBackend(f"http://127.0.0.1:{port}")
        assert backend.models() == ["micro"]
        messages = conversation([{"role": "user", "content": "Describe the audio."}], tone(1.0))
        texts = list(backend.stream("micro", messages, ChatSettings(max_tokens=6)))
        assert texts and texts[-1]
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # it streams
        with pytest.raises(Exception, match="does not exist on this server"):
            list(backend.stream("nope", messages, ChatSettings(max_tokens=6)))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- the page, in a browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_root(tmp_path_factory, micro_af3, synth_data) -> Path:
    """A root folder holding a micro AF3, synthetic data, a 3-step adapter, an evaluation run and a bad manifest."""
    import soundfile as sf

    from audiotune.evaluate import EvalConfig, run_evaluation
    from audiotune.train import train

    root = tmp_path_factory.mktemp("ui-root")
    shutil.copytree(micro_af3, root / "models" / "micro-af3")
    shutil.copytree(synth_data, root / "data" / "synth")
    model, data = str(root / "models" / "micro-af3"), str(root / "data" / "synth")
    train(TrainConfig.from_flat(model=model, dataset=data, output_dir=str(root / "runs" / "micro3"),
                                per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2,
                                max_steps=3, logging_steps=1, eval_steps=3, save_steps=3, eval_take=2,
                                eval_generate_take=0, seed=0))
    run_evaluation(EvalConfig.from_flat(model=model, dataset=data, out=str(root / "runs" / "eval"),
                                        adapters=[str(root / "runs" / "micro3")], compare=True, split="test", take=3,
                                        max_new_tokens=6, with_meteor=False))
    manifest = root / "data" / "manifest"
    manifest.mkdir()
    sf.write(manifest / "good.wav", tone(1.0), 16000)
    sf.write(manifest / "silent.wav", np.zeros(8000, dtype="float32"), 16000)
    (manifest / "broken.wav").write_bytes(b"RIFF1234notawav")
    rows = [("good.wav", "A tone."), ("silent.wav", "Silence."), ("broken.wav", "Broken.")]
    (manifest / "train.jsonl").write_text("".join(json.dumps({"audio": a, "caption": c}) + "\n" for a, c in rows))
    sf.write(root / "clip.wav", tone(1.5, 330), 16000)
    return root


@pytest.fixture(scope="module")
def ui_url(ui_root):
    from audiotune.ui import UiSettings, launch

    demo, ctx, url = launch(UiSettings(root=str(ui_root), port=_free_port(), model="models/micro-af3",
                                       adapters=["tuned=runs/micro3"]), block=False)
    yield url, ctx
    ctx.jobs.stop_all()
    demo.close()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: scripts/system-deps.sh --test installs it")
        pytest.skip("chromium not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def page(browser, ui_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(ui_url[0])
    page.wait_for_selector("#pg-audio")
    yield page
    context.close()


def _tab(page, name: str) -> None:
    page.click(f"button[role=tab]:has-text('{name}')")


def _screenshot(page, name: str, full_page: bool = False) -> None:
    folder = os.environ.get("AUDIOTUNE_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        time.sleep(0.5)
        page.screenshot(path=str(Path(folder) / f"ui-{name}.png"), full_page=full_page)


def _fill(page, field: str, value) -> None:
    """Type ``value`` into the train form's field and wait until the field holds it: on a slow machine the tab can
    still be rendering when the test types, and a value typed into an element about to be replaced is lost (seen
    once: Start then said "No model given")."""
    from playwright.sync_api import expect

    expect(page.locator("#tr-start")).to_be_visible()
    box = page.locator(f"#tr-{field} input, #tr-{field} textarea").first
    box.fill(str(value))
    expect(box).to_have_value(str(value))


@pytest.mark.slow
def test_playground_answers_then_compares_base_and_adapter(page, ui_root):
    from playwright.sync_api import expect

    page.set_input_files("#pg-audio input[type=file]", str(ui_root / "clip.wav"))
    page.wait_for_selector("#pg-audio audio[src]", state="attached")
    page.fill("#pg-prompt textarea", "Describe the audio.")
    page.click("#pg-send")
    expect(page.locator("#pg-chat-0 .user").last).to_have_text("Describe the audio.")  # send is off by now
    expect(page.locator("#pg-send")).to_be_enabled(timeout=60_000)  # and on again once the answer is whole
    expect(page.locator("#pg-chat-0 .bot").last).not_to_have_text("")
    assert not page.locator("#pg-chat-1").is_visible()
    page.get_by_label("tuned").check()  # base and adapter side by side, a new chat on the same clip
    expect(page.locator("#pg-chat-1")).to_be_visible()
    page.fill("#pg-prompt textarea", "What do you hear?")
    page.click("#pg-send")
    expect(page.locator("#pg-chat-1 .user").last).to_have_text("What do you hear?")
    expect(page.locator("#pg-send")).to_be_enabled(timeout=60_000)
    for pane in (0, 1):
        expect(page.locator(f"#pg-chat-{pane} .bot").last).not_to_have_text("")
    labels = page.locator("#pg-chat-0 [data-testid=block-label]").inner_text() + \
        page.locator("#pg-chat-1 [data-testid=block-label]").inner_text()
    assert "micro-af3" in labels and "tuned" in labels
    _screenshot(page, "playground")


@pytest.mark.slow
def test_evaluate_tab_shows_metrics_and_playable_audio(page):
    from playwright.sync_api import expect

    _tab(page, "Evaluate")
    page.fill("#ev-folder input", "runs/eval")
    page.keyboard.press("Enter")
    page.click("#ev-open")
    expect(page.locator("#ev-samples audio")).to_have_count(3)
    metrics = page.locator("#ev-metrics").inner_text()
    assert "CIDEr-D" in metrics and "base" in metrics and "micro3" in metrics
    rows = page.locator("#ev-samples tr.at-sample")
    assert rows.first.locator("td").nth(3).inner_text().strip()  # references
    duration = page.evaluate("""async () => {
        const audio = document.querySelector('#ev-samples audio');
        if (audio.readyState < 1) await new Promise((ok, fail) => {
            audio.addEventListener('loadedmetadata', ok, {once: true});
            audio.addEventListener('error', () => fail(new Error('audio failed to load')), {once: true});
            audio.load(); });
        return audio.duration; }""")
    assert 0.5 < duration < 4  # the synthetic clips are 1-3 s
    page.fill("#ev-filter textarea", "no such text anywhere")
    expect(page.locator("#ev-samples tr.at-sample")).to_have_count(0)
    page.fill("#ev-filter textarea", "")
    expect(page.locator("#ev-samples tr.at-sample")).to_have_count(3)
    _screenshot(page, "evaluate")


@pytest.mark.slow
def test_evaluate_tab_launches_an_evaluation(page, ui_root):
    from playwright.sync_api import expect

    _tab(page, "Evaluate")
    page.click("#ev-launch > button.label-wrap")
    page.fill("#ev-model textarea", "models/micro-af3")
    page.fill("#ev-dataset textarea", "data/synth")
    page.fill("#ev-take textarea", "1")
    page.fill("#ev-out textarea", "runs/eval-from-ui")
    page.click("#ev-run")  # the base alone, on one clip: the cheapest real evaluation
    expect(page.locator("#ev-samples tr.at-sample")).to_have_count(1, timeout=180_000)
    expect(page.locator("#ev-metrics")).to_contain_text("CIDEr-D")
    metrics = json.loads((ui_root / "runs" / "eval-from-ui" / "metrics.json").read_text())
    assert metrics["rows"] == 1 and list(metrics["models"]) == ["base"]


@pytest.mark.slow
def test_other_tabs_answer_while_a_model_generates(page, ui_root, ui_url, monkeypatch):
    import threading

    from playwright.sync_api import expect

    ctx = ui_url[1]
    # The generation is held (inside the backend's lock) until the Evaluate tab has answered: a tiny model can finish
    # its answers before the other tab opens, which made this test a race on an idle machine.
    release, engine = threading.Event(), ctx.backend.engine
    run = engine.run

    def held_run(requests):
        assert release.wait(120), "the test never released the generation"
        return run(requests)

    monkeypatch.setattr(engine, "run", held_run)
    page.set_input_files("#pg-audio input[type=file]", str(ui_root / "clip.wav"))
    page.wait_for_selector("#pg-audio audio[src]", state="attached")
    page.click("#pg-settings > button.label-wrap")
    page.locator("#pg-max-tokens input[type=number]").fill("1024")
    page.locator("#pg-max-tokens input[type=number]").press("Enter")
    page.get_by_label("tuned").check()  # two long answers, one after the other
    page.fill("#pg-prompt textarea", "Describe the audio at length.")
    page.click("#pg-send")
    deadline = time.time() + 30
    while not ctx.backend.lock.locked() and time.time() < deadline:
        time.sleep(0.05)
    assert ctx.backend.lock.locked(), "the generation did not start"
    _tab(page, "Evaluate")
    page.fill("#ev-folder input", "runs/eval")
    page.keyboard.press("Enter")
    page.click("#ev-open")
    expect(page.locator("#ev-samples audio")).to_have_count(3)
    # The Evaluate tab answered while the answers were still being generated: send stays off until both are whole
    # (the backend's lock alone is released for an instant between the two models' answers).
    assert page.locator("#pg-send").is_disabled()
    release.set()
    expect(page.locator("#pg-send")).to_be_enabled(timeout=120_000)  # let it finish: no generation outlives the test


@pytest.mark.slow
def test_a_path_outside_the_root_is_refused(page, ui_url, ui_root):
    import httpx
    from playwright.sync_api import expect

    url = ui_url[0].rstrip("/")
    assert httpx.get(f"{url}/gradio_api/file=/etc/passwd").status_code == 403  # Gradio serves the root alone
    assert httpx.get(f"{url}/gradio_api/file={ui_root / 'clip.wav'}").status_code == 200

    _tab(page, "Evaluate")
    page.fill("#ev-folder input", "/etc")
    page.keyboard.press("Enter")
    page.click("#ev-open")
    expect(page.get_by_text("is outside the UI's root folder").first).to_be_visible()
    expect(page.locator("#ev-samples audio")).to_have_count(0)
    _tab(page, "Train")  # the training form confines its paths too
    _fill(page, "model", "models/micro-af3")
    _fill(page, "dataset", "data/synth")
    _fill(page, "output_dir", "../../elsewhere")
    page.click("#tr-start")
    expect(page.get_by_text("output_dir '../../elsewhere' is outside the UI's root folder").first).to_be_visible()
    assert not (ui_root.parent.parent / "elsewhere").exists()


@pytest.mark.slow
def test_train_form_runs_three_steps_with_a_live_loss_curve(page, ui_root):
    from playwright.sync_api import expect

    _tab(page, "Train")
    _fill(page, "model", "models/micro-af3")
    _fill(page, "dataset", "data/synth")
    _fill(page, "output_dir", "runs/from-ui")
    for group in ("data", "optimisation", "generation-based"):
        page.click(f"#tr-group-{group} > button.label-wrap")
    for field, value in dict(eval_take=2, max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                             logging_steps=1, eval_steps=3, save_steps=3, learning_rate=0.01, eval_generate_take=0).items():
        _fill(page, field, value)
    page.click("#tr-start")
    status = page.locator("#tr-status")
    expect(status).to_contain_text("running")
    seen_points, deadline = set(), time.time() + 240
    while time.time() < deadline:
        text = status.inner_text()
        seen_points |= {int(w) for w in text.replace("·", " ").split("curve point")[0].split()[-1:] if w.isdigit()}
        if "finished" in text:
            break
        time.sleep(0.5)
    assert "finished" in status.inner_text() and "step 3 of 3" in status.inner_text()
    assert len(seen_points) >= 2 and max(seen_points) >= 4  # 3 train losses + the eval loss, arriving live
    expect(page.locator("#tr-curve svg .mark-line path").first).to_be_attached()
    assert "done 3 steps" in page.locator("#tr-log textarea").input_value()
    saved = TrainConfig.from_yaml(ui_root / "runs" / "from-ui" / "run_config.yaml")
    assert saved.max_steps == 3 and saved.model == str(ui_root / "models" / "micro-af3")
    assert (ui_root / "runs" / "from-ui" / "adapter_model.safetensors").exists()
    page.click("#tr-refresh")
    expect(page.locator("#tr-runs")).to_contain_text("runs/from-ui")
    for group in ("data", "optimisation", "generation-based"):
        page.click(f"#tr-group-{group} > button.label-wrap")  # folded again for the screenshot
    _screenshot(page, "train")


@pytest.mark.slow
def test_data_tab_checks_a_manifest_with_players(page):
    from playwright.sync_api import expect

    _tab(page, "Data")
    page.fill("#dt-dataset textarea", "data/manifest/train.jsonl")
    page.click("#dt-check")
    issues = page.locator("#dt-issues tr.at-issue")
    expect(issues).to_have_count(2)
    expect(page.locator("#dt-summary")).to_contain_text("3 (2)")  # rows (usable)
    broken = page.locator("#dt-issues tr.at-fails")
    assert "cannot decode audio" in broken.inner_text() and broken.locator("audio").count() == 0
    assert page.locator("#dt-issues tr.at-warning audio").count() == 1  # the silent clip plays
    expect(page.locator("#dt-histogram svg").first).to_be_attached()
    _screenshot(page, "data", full_page=True)


def _status_step(page) -> int:
    text = page.locator("#tr-status").inner_text()
    marker = text.split("step ", 1)
    return int(marker[1].split()[0]) if len(marker) > 1 and marker[1].split()[0].isdigit() else 0


@pytest.mark.slow
def test_train_stop_saves_a_checkpoint_and_resume_finishes_as_an_uninterrupted_run(page, ui_root, tmp_path):
    """Stop a run from the UI, resume it from the UI, let it finish: it resumed from the stop's checkpoint, and its
    adapter equals the one a run of the same configuration without a stop trains."""
    from playwright.sync_api import expect
    from safetensors.torch import load_file

    from audiotune.checkpoints import checkpoint_steps
    from audiotune.train import train

    _tab(page, "Train")
    _fill(page, "model", "models/micro-af3")
    _fill(page, "dataset", "data/synth")
    _fill(page, "output_dir", "runs/stop-resume")
    for group in ("data", "optimisation"):
        page.click(f"#tr-group-{group} > button.label-wrap")
    # Many more steps than run before the stop lands (it is clicked as soon as step 1 shows), few enough to finish.
    for field, value in dict(eval_split="none", eval_take=0, max_steps=150, per_device_train_batch_size=1,
                             logging_steps=1, gradient_accumulation_steps=1, save_steps=150).items():
        _fill(page, field, value)
    page.click("#tr-start")
    status = page.locator("#tr-status")
    expect(status).to_contain_text(re.compile(r"running · step [1-9]\d* of 150"), timeout=120_000)
    page.click("#tr-stop")
    expect(status).to_contain_text("stopped (checkpoint saved", timeout=120_000)
    run = ui_root / "runs" / "stop-resume"
    stopped_at = checkpoint_steps(run)[-1][0]
    assert 1 <= stopped_at < 150 and "stopped by a signal" in page.locator("#tr-log textarea").input_value()
    page.click("#tr-resume")
    expect(status).to_contain_text("finished", timeout=300_000)
    resumed = json.loads((run / "train_metrics.json").read_text())
    assert resumed["resumed_from"] == str(run / f"checkpoint-{stopped_at}") and resumed["steps"] == 150

    whole = tmp_path / "uninterrupted"
    train(TrainConfig.from_yaml(run / "run_config.yaml", output_dir=str(whole), resume=False))
    expected, actual = (load_file(str(folder / "adapter_model.safetensors")) for folder in (whole, run))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-5), name
    assert min(float(v.abs().max()) for k, v in actual.items() if "lora_B" in k) > 0  # it trained
