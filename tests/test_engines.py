"""The engines (#20): one interface behind infer, eval, serve and the playground; the family resolved once a call.

The family is counted where it is resolved (``models.loading.resolve_family``, the real function, wrapped to count):
before engines, one ``infer`` call resolved it in ``infer``, again in ``load_base_model`` and, with vLLM, again per
adapter export.
"""

from __future__ import annotations

import typing

import pytest
import soundfile as sf
import torch

from audiotune import config
from audiotune.config import EvalConfig, GenerationSettings, ServeConfig
from audiotune.engines import ENGINES, Engine, engine_class, open_engine
from audiotune.errors import ConfigError
from audiotune.generate import examples_from_audio, generate
from audiotune.models import loading
from tests.conftest import tone

SETTINGS = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def random_adapter(micro_af3, tmp_path_factory):
    """A LoRA on the micro AF3 whose B matrices are random (PEFT's init_lora_weights=False): it changes answers."""
    from peft import LoraConfig, get_peft_model

    model, family = loading.load_model(str(micro_af3))
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=family.lm_lora_regex, init_lora_weights=False))
    out = tmp_path_factory.mktemp("random-adapter")
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-clips")
    for i, freq in enumerate((440, 880)):
        sf.write(root / f"clip{i}.wav", tone(1.0 + i / 2, freq), 16000)
    return sorted(root.glob("*.wav"))


@pytest.fixture
def resolutions(monkeypatch):
    """The number of times a checkpoint's family is resolved (the real resolution runs)."""
    calls: list[str] = []
    real = loading.resolve_family

    def counted(model):
        calls.append(str(model))
        return real(model)

    monkeypatch.setattr(loading, "resolve_family", counted)
    return calls


def test_infer_resolves_the_family_once(micro_af3, random_adapter, clips, resolutions):
    from audiotune.infer import infer

    results = infer(clips, str(micro_af3), adapter=str(random_adapter), max_new_tokens=3)
    assert all(r.ok and r.answer is not None for r in results)
    assert resolutions == [str(micro_af3)]


def test_eval_resolves_the_family_once_for_the_base_and_its_adapters(micro_af3, random_adapter, synth_data,
                                                                      tmp_path, resolutions):
    from audiotune.evaluate import run_evaluation

    cfg = EvalConfig.from_flat(model=str(micro_af3), dataset=str(synth_data), adapters=[str(random_adapter)],
                               compare=True, out=str(tmp_path), take=2, max_new_tokens=3, with_meteor=False,
                               batch_size=2)
    report = run_evaluation(cfg.validate())
    assert [m.name for m in report.models] == ["base", random_adapter.name]
    assert resolutions == [str(micro_af3)]


def test_serve_resolves_the_family_once(micro_af3, random_adapter, resolutions):
    from audiotune.serve.server import build_app

    app = build_app(ServeConfig.from_flat(model=str(micro_af3), adapters=[f"tuned={random_adapter}"]))
    assert app.state.engine.model_names() == [micro_af3.name, "tuned"]
    assert resolutions == [str(micro_af3)]


def test_the_native_engine_answers_as_the_model_does_for_the_base_and_each_adapter(micro_af3, random_adapter, clips):
    """One engine holds the base and a named adapter; each name answers as that model loaded alone would."""
    from audiotune.audio import load_audio

    engine = open_engine("transformers", str(micro_af3), {"tuned": str(random_adapter)}, batch_size=2)
    examples = examples_from_audio([load_audio(c, 16000, c.name) for c in clips], "Describe the audio.")
    processor = loading.load_processor(str(micro_af3))
    alone = {}
    for name, adapter in (("base", None), ("tuned", random_adapter)):
        model, family = loading.load_model(str(micro_af3), adapter=adapter)
        alone[name] = generate(model, processor, family, examples, settings=SETTINGS)
    assert alone["base"] != alone["tuned"]  # the adapter changes answers, so selecting it is visible
    assert engine.generate(examples, SETTINGS) == alone["base"]
    assert engine.generate(examples, SETTINGS, model="tuned") == alone["tuned"]
    assert engine.generate(examples, SETTINGS, model=micro_af3.name) == alone["base"]
    with pytest.raises(ConfigError, match="'other' is not loaded; loaded: micro-af3.*, tuned"):
        engine.generate(examples, SETTINGS, model="other")


def test_every_backend_is_one_engine_module_named_by_the_flag():
    from audiotune.models.encoder_frames import ENCODER_FRAMES

    assert tuple(ENGINES) == config.BACKENDS  # the flag's choices are the engines there are
    assert typing.get_args(config.EncoderFrames) == ENCODER_FRAMES
    for name in ENGINES:
        cls = engine_class(name)
        assert issubclass(cls, Engine) and cls.backend == name
    with pytest.raises(ConfigError, match="--backend 'tgi': choose transformers or vllm"):
        open_engine("tgi", "any-model")
