"""Our shipped processor files and published configs against the public record of the real checkpoints.

Each expected value below is copied from the public source cited beside it (never computed by audiotune): when a
shipped chat template, special token or config value drifts from what the real checkpoint does, a test here fails.
The processors are the tiny checkpoints' (the published files with a tokenizer trained here), so strings are
compared exactly and token ids through the published config, which keeps the real ids.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from audiotune.models.families import family_by_name
from audiotune.models.loading import load_processor
from audiotune.models.tiny import PUBLISHED_DIR, cached_tiny


def _processor(name: str):
    """The family's processor as audiotune loads it (Phi-4-multimodal's template is restored from its tokenizer)."""
    return load_processor(cached_tiny(name))


def _published(name: str) -> dict:
    return json.loads((PUBLISHED_DIR / f"{family_by_name(name).hub_id.replace('/', '--')}.json").read_text())


def _prompt(processor, messages, **kwargs) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def test_audio_flamingo_3_renders_the_transformers_test_prompt():
    # huggingface/transformers tests/models/audioflamingo3/test_processing_audioflamingo3.py::test_chat_template
    # (nvidia/audio-flamingo-3-hf): the audio goes before the text, the default system turn is added.
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is surprising about the relationship between the barking and the music?"},
        {"type": "audio", "path": "https://huggingface.co/datasets/nvidia/AudioSkills/resolve/main/assets/"
                                  "dogs_barking_in_sync_with_the_music.wav"}]}]
    assert _prompt(_processor("af3"), messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<sound>What is surprising "
        "about the relationship between the barking and the music?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen2_audio_renders_the_transformers_test_prompt():
    # huggingface/transformers tests/models/qwen2_audio/test_processor_qwen2_audio.py::test_chat_template
    # (Qwen/Qwen2-Audio-7B-Instruct)
    url = "https://qianwen-res.oss-cn-beijing.aliyuncs.com/Qwen2-Audio/audio/"
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio_url": url + "glass-breaking-151256.mp3"},
                                     {"type": "text", "text": "What's that sound?"}]},
        {"role": "assistant", "content": "It is the sound of glass shattering."},
        {"role": "user", "content": [{"type": "audio", "audio_url": url + "f2641_0_throatclearing.wav"},
                                     {"type": "text", "text": "How about this one?"}]}]
    assert _prompt(_processor("qwen2audio"), messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1: <|audio_bos|>"
        "<|AUDIO|><|audio_eos|>\nWhat's that sound?<|im_end|>\n<|im_start|>assistant\nIt is the sound of glass "
        "shattering.<|im_end|>\n<|im_start|>user\nAudio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nHow about this "
        "one?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_asr_renders_an_empty_system_turn_and_answers_with_its_language_preamble():
    # huggingface/transformers tests/models/qwen3_asr/test_processing_qwen3_asr.py::test_chat_template
    # (Qwen/Qwen3-ASR-0.6B-hf): one system turn always, empty by default; the user turn holds the audio only.
    messages = [{"role": "user", "content": [
        {"type": "audio", "path": "https://huggingface.co/datasets/bezzam/audio_samples/resolve/main/"
                                  "librispeech_mr_quilter.wav"}]}]
    processor = _processor("qwen3asr")
    assert _prompt(processor, messages) == ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|>"
                                            "<|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n")
    # test_decode_formats: the real model writes "language English<asr_text>Mr. Quilter ..."; <asr_text> is decoded
    # with the text (not special), and the answer alone is the transcript.
    raw = "language English<asr_text>Mr. Quilter is the apostle of the middle classes."
    tokenizer = processor.tokenizer
    assert tokenizer.decode(tokenizer(raw)["input_ids"], skip_special_tokens=True) == raw
    family = family_by_name("qwen3asr")
    assert family.parse_answer(raw) == "Mr. Quilter is the apostle of the middle classes."
    # QwenLM/Qwen3-ASR finetuning/README.md: without language information the target is "language None<asr_text>..."
    assert family.format_answer("Another example.") == "language None<asr_text>Another example."
    # Third-party copies of the 1.7B config.json: rope_theta 1e6 (the audit in ../shared/reference).
    assert _published("qwen3asr")["text_config"]["rope_parameters"]["rope_theta"] == 1_000_000


def test_qwen3_asr_reads_its_own_fine_tuning_data_and_a_language_column(tmp_path):
    # QwenLM/Qwen3-ASR finetuning/README.md: rows {"audio": ..., "text": "language English<asr_text>This is a test
    # sentence."}; "If you have language info, use: language English<asr_text>..., If you do not have language info,
    # use: language None<asr_text>...". The preamble is written once, with the row's language; metrics compare the
    # transcript alone.
    import soundfile as sf

    from audiotune.config import DataConfig
    from audiotune.data.collator import ConversationCollator
    from audiotune.data.examples import BadSampleLog, ExampleDataset
    from audiotune.data.prepare import prepare_split
    from audiotune.models.loading import resolve_family

    sf.write(tmp_path / "utt.wav", np.zeros(16000, np.float32), 16000)
    rows = [{"audio": "utt.wav", "text": "language English<asr_text>This is a test sentence."},
            {"audio": "utt.wav", "text": "Ein Satz.", "language": "German"},
            {"audio": "utt.wav", "text": "No language here."}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    family = resolve_family(str(cached_tiny("qwen3asr")))
    rows_, build = prepare_split(DataConfig(dataset=str(tmp_path / "train.jsonl"),
                                                       task="asr"), "train", family)
    examples = ExampleDataset(rows_, build, BadSampleLog(None)).usable()
    assert [e.references for e in examples] == [["This is a test sentence."], ["Ein Satz."], ["No language here."]]
    processor = _processor("qwen3asr")
    batch = ConversationCollator(processor, family, training=True)(examples)
    targets = [processor.tokenizer.decode(row[row != -100]) for row in batch["labels"]]
    assert targets == ["language English<asr_text>This is a test sentence.<|im_end|>",
                       "language German<asr_text>Ein Satz.<|im_end|>",
                       "language None<asr_text>No language here.<|im_end|>"]


def test_qwen3_omni_renders_what_the_real_processor_gives():
    # huggingface/transformers tests/models/qwen3_omni_moe/test_modeling_qwen3_omni_moe.py (integration test on
    # Qwen/Qwen3-Omni-30B-A3B-Instruct): input_ids start [151644, 872, 198, 151669, 151675, ...] = <|im_start|> user
    # \n <|audio_start|> <|audio_pad|>: no system turn; decoded without special tokens the prompt is
    # "user\nWhat's that sound and what kind of dog is this?\nassistant\n".
    from PIL import Image

    messages = [{"role": "user", "content": [
        {"type": "audio", "audio_url": "glass-breaking-151256.mp3"}, {"type": "image", "image_url": "demo_small.jpg"},
        {"type": "text", "text": "What's that sound and what kind of dog is this?"}]}]
    processor = _processor("qwen3omni")
    text = _prompt(processor, messages)
    batch = processor(text=text, audio=[np.zeros(16000, dtype=np.float32)], images=[Image.new("RGB", (64, 64))])
    ids = list(batch["input_ids"][0])
    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(ids[:5]) == ["<|im_start|>", "user", "Ċ", "<|audio_start|>",
                                                        "<|audio_pad|>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == \
        "user\nWhat's that sound and what kind of dog is this?\nassistant\n"
    # The real ids of those tokens, and the rope and audio timing of the released config (test above; processing
    # _qwen3_omni_moe.py _defaults position_id_per_seconds 13.0; third-party config dumps for the rest).
    config = _published("qwen3omni")
    assert (config["audio_start_token_id"], config["audio_token_id"], config["audio_end_token_id"]) == \
        (151669, 151675, 151670)
    assert (config["image_token_id"], config["video_token_id"], config["vision_start_token_id"]) == \
        (151655, 151656, 151652)
    assert config["position_id_per_seconds"] == 13
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [24, 20, 20]
    assert config["vision_config"]["patch_size"] == processor.image_processor.patch_size == 16


def test_phi4_multimodal_uses_the_converted_checkpoints_placeholders():
    # huggingface/transformers convert_phi4_multimodal_weights_to_hf.py: extra_special_tokens image_token
    # <|endoftext10|>, audio_token <|endoftext11|>; vllm-project/vllm phi4mm.py _AUDIO_PLACEHOLDER_TOKEN_ID = 200011,
    # _IMAGE_PLACEHOLDER_TOKEN_ID = 200010. vLLM's run_phi4mm prompt: <|user|>{audio}{question}<|end|><|assistant|>.
    processor = _processor("phi4mm")
    assert (processor.tokenizer.audio_token, processor.tokenizer.image_token) == ("<|endoftext11|>", "<|endoftext10|>")
    messages = [{"role": "user", "content": [{"type": "audio", "url": "clip.wav"},
                                             {"type": "text", "text": "What is recited in the audio?"}]}]
    assert _prompt(processor, messages) == "<|user|><|endoftext11|>What is recited in the audio?<|end|><|assistant|>"
    config = _published("phi4mm")
    assert (config["audio_config"]["audio_token_id"], config["vision_config"]["image_token_id"]) == (200011, 200010)


def test_granite_speech_renders_vllms_prompt():
    # vllm-project/vllm examples/offline_inference/audio_language.py run_granite_speech (the system turn as written
    # there; our template only adds a default one when none is given).
    system = ("Knowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\nYou are Granite, developed by "
              "IBM. You are a helpful AI assistant")
    question = "What is recited in the audio?"
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": [{"type": "audio", "path": "clip.wav"},
                                             {"type": "text", "text": question}]}]
    assert _prompt(_processor("granite_speech"), messages) == (
        f"<|start_of_role|>system<|end_of_role|>{system}<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>"
        f"<|audio|>{question}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>")


def test_granite_speech_plus_is_the_2b_checkpoint_with_its_documented_prompt():
    # huggingface/transformers docs/source/en/model_doc/granite_speech_plus.md (SYSTEM_PROMPT, ASR_PROMPT) and the
    # integration test's decoded output, which starts "systemKnowledge Cutoff Date: April 2024.\nToday's Date:
    # December 19, 2024.\nYou are Granite, developed by IBM. You are a helpful AI assistant\nuser can you transcribe
    # the speech into a written format?\nassistant"
    # (tests/models/granite_speech_plus/test_modeling_granite_speech_plus.py)
    processor = _processor("granite_speech_plus")
    system = ("Knowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\nYou are Granite, developed by "
              "IBM. You are a helpful AI assistant")
    chat = [{"role": "system", "content": system},
            {"role": "user", "content": "<|audio|> can you transcribe the speech into a written format?"}]
    ids = processor.tokenizer(_prompt(processor, chat))["input_ids"]
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == (
        "systemKnowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\nYou are Granite, developed by "
        "IBM. You are a helpful AI assistant\nuser can you transcribe the speech into a written format?\nassistant")
    assert _prompt(processor, chat[1:]) == _prompt(processor, chat)  # the documented system turn is the default
    # Third-party copies of the real config.json agree on a Granite-4.0 LM (vocab 100353, 2048 wide, 40 layers,
    # 16/4 heads), audio token 100352, a 16-layer encoder exporting layer 3, a 2-layer Q-Former reading 2048.
    config = _published("granite_speech_plus")
    text, encoder, projector = config["text_config"], config["encoder_config"], config["projector_config"]
    assert (text["vocab_size"], text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
            text["num_key_value_heads"]) == (100353, 2048, 40, 16, 4)
    assert config["audio_token_index"] == 100352
    assert (encoder["num_layers"], encoder["cat_hidden_layers"], encoder["output_dim"]) == (16, [3], 348)
    assert (projector["num_hidden_layers"], projector["hidden_size"],
            projector["encoder_hidden_size"]) == (2, 1024, 2048)


def test_granite_speech_plus_plan_counts_about_two_billion_parameters(cli):
    """`audiotune plan` once counted the class defaults (a 7B-class LM and a 12-layer Q-Former): 3-4x too many."""
    code, out, _ = cli("plan", "--model", "ibm-granite/granite-speech-4.1-2b-plus", "--json")
    assert code == 0
    total = json.loads(out)["parameters"]["total"]
    assert 1.9e9 < total < 2.4e9, total


def test_dots3_note_wraps_audio_in_its_compression_markers():
    # The released tokenizer's <|audio_comp_start|> (151718), <|audio_comp_pad|> (151720), <|audio_comp_end|>
    # (151719): huggingface/transformers processing_dots3_note.py (audio_start_token / audio_end_token, upstream)
    # and third-party launchers; the ids are a third-party port's (not verified).
    processor = _processor("dots3_note")
    messages = [{"role": "user", "content": [{"type": "audio", "path": "clip.wav"},
                                             {"type": "text", "text": "Describe the audio."}]}]
    assert "<|audio_comp_start|><|audio_comp_pad|><|audio_comp_end|>Describe the audio." in _prompt(processor, messages)


def test_vibevoice_asr_renders_the_converters_prompt_and_trains_on_the_header_the_model_writes():
    # huggingface/transformers src/transformers/models/vibevoice_asr/convert_vibevoice_asr_to_hf.py create_processor:
    # the JSON-transcript system turn, the user's text as "extra info" context, no assistant turn even with
    # add_generation_prompt (the same text: a third-party vLLM plugin request reads "This is a 351.73 seconds audio,
    # with extra info: Tea Brew,Aiden Host,Rent Byte\n\nPlease transcribe it with these keys: ...").
    from audiotune.data.collator import ConversationCollator
    from audiotune.conversation import Example
    from audiotune.models.loading import resolve_family

    processor = _processor("vibevoice_asr")
    messages = [{"role": "user", "content": [{"type": "audio", "audio": np.zeros(24000, np.float32)},
                                             {"type": "text", "text": "Tea Brew"}]}]
    prompt = ("<|im_start|>system\nYou are a helpful assistant that transcribes audio input into text output in JSON "
              "format.<|im_end|>\n<|im_start|>user\n<|object_ref_start|><|box_start|><|object_ref_end|>\nThis is a "
              "<|AUDIO_DURATION|> seconds audio, with extra info: Tea Brew\n\nPlease transcribe it with these keys: "
              "Start time, End time, Speaker ID, Content<|im_end|>\n")
    assert _prompt(processor, messages) == prompt
    # The converter: generation_config eos = Qwen2.5-7B's tokenizer eos (<|endoftext|>), pad = <|image_pad|>.
    generation = json.loads((cached_tiny("vibevoice_asr") / "generation_config.json").read_text())
    ids = processor.tokenizer.convert_tokens_to_ids
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (ids("<|endoftext|>"), ids("<|image_pad|>"))
    # microsoft/VibeVoice finetuning-asr/lora_finetune.py: labels = the tokenizer's ChatML assistant turn
    # ("<|im_start|>assistant\n" + target + "<|im_end|>") after the prompt, which is not labelled.
    family = resolve_family(str(cached_tiny("vibevoice_asr")))
    batch = ConversationCollator(processor, family, training=True)(
        [Example("x", messages, ['[{"Start":0,"End":1.0,"Content":"hi"}]'])])
    labels = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labels) == (
        '<|im_start|>assistant\n[{"Start":0,"End":1.0,"Content":"hi"}]<|im_end|>')
    # tests/models/vibevoice_asr/test_processing_vibevoice_asr.py test_decode_output_formats: the model's decoded
    # output, special tokens skipped, begins with the header's text; answers lose it.
    raw = 'assistant\n[{"Start":0,"End":7.56,"Speaker":0,"Content":"Revevoices is a novel framework."}]\n'
    assert family.parse_answer(raw) == raw.removeprefix("assistant\n").strip()


def _published_processor(name: str, tmp_path):
    """The family's processor with the published processor_config.json (the real image sizes) instead of the tiny
    checkpoint's shrunk one: what a user's checkpoint would load."""
    import shutil

    folder = tmp_path / name
    shutil.copytree(cached_tiny(name), folder)
    published = PUBLISHED_DIR / "processors" / family_by_name(name).hub_id.replace("/", "--")
    shutil.copyfile(published / "processor_config.json", folder / "processor_config.json")
    return load_processor(folder)


def _image_tokens(processor, width: int, height: int) -> int:
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (width, height))},
                                             {"type": "text", "text": "What is this?"}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    return sum(1 for i in inputs["input_ids"][0] if int(i) == image_id)


def test_gemma3n_sees_an_image_as_256_tokens_at_768_pixels(tmp_path):
    # huggingface/transformers src/transformers/models/gemma3n/convert_gemma3n_weights.py:
    # SiglipImageProcessorFast(image_seq_length=256, size={"height": 768, "width": 768}, ...); the published config's
    # vision_soft_tokens_per_image is 256 too.
    processor = _published_processor("gemma3n", tmp_path)
    assert processor.image_processor.size == {"height": 768, "width": 768}
    assert _image_tokens(processor, 1024, 512) == 256 == _published("gemma3n")["vision_soft_tokens_per_image"]


def test_gemma4_e2b_gives_an_image_at_most_280_soft_tokens(tmp_path):
    # huggingface/transformers src/transformers/models/gemma4/convert_gemma4_weights.py: the on-device vision config
    # (E2B/E4B) has default_output_length=280 and pooling_kernel_size=3, and the processor's image_seq_length and the
    # image processor's max_soft_tokens are set to it. A 960x672 image is 60x42 patches of 16 = 280 after pooling.
    processor = _published_processor("gemma4", tmp_path)
    assert (processor.image_seq_length, processor.image_processor.max_soft_tokens) == (280, 280)
    assert _image_tokens(processor, 672, 960) == 280


def test_apertus_uses_the_released_image_markers_and_eos():
    # huggingface/transformers processing_apertus1p5.py (commit 5781b0a5) falls back to these names; ollama's
    # mlxrunner Apertus port and a canonical tokenizer recipe use the same; eos </s> (id 2 in the text config) with
    # the turn stop <|assistant_end|> kept in generation_config.
    tokenizer = _processor("apertus").tokenizer
    assert (tokenizer.image_token, tokenizer.boi_token, tokenizer.eoi_token, tokenizer.image_wrapper_token,
            tokenizer.eol_token) == ("<|image|>", "<|img_start|>", "<|img_end|>", "<|img_token_start|>",
                                     "<|img_end_of_row|>")
    assert (tokenizer.audio_token, tokenizer.boa_token, tokenizer.eoa_token) == (
        "<|audio|>", "<|audio_start|>", "<|audio_end|>")
    assert tokenizer.eos_token == "</s>"
    generation = json.loads((cached_tiny("apertus") / "generation_config.json").read_text())
    stops = {tokenizer.convert_tokens_to_ids(t) for t in ("</s>", "<|assistant_end|>")}
    assert set(generation["eos_token_id"]) == stops


@pytest.mark.parametrize("name", ["qwen3asr", "fun_asr_nano"])
def test_qwen3_based_language_models_use_rope_theta_1e6(name):
    # Qwen3-0.6B's published config (the LM Fun-ASR-Nano's conversion script bundles) and Qwen3-ASR's config copies.
    assert _published(name)["text_config"]["rope_parameters"]["rope_theta"] == 1_000_000


def test_omniasr_refuses_to_train_on_a_reconstructed_prompt_with_the_upstream_reason(tmp_path):
    """The real OmniASR processor has no chat template (transformers processing_omniasr.py): a family that would
    train on an invented prompt is blocked with the exact reason, not silently wrong."""
    from audiotune.errors import ModelFamilyError
    from audiotune.models.loading import resolve_family

    with pytest.raises(ModelFamilyError, match="has no chat template.*language_ids"):
        resolve_family(str(cached_tiny("omniasr")))


def test_families_without_a_public_record_say_so(cli):
    code, out, _ = cli("models", "--json")
    assert code == 0
    record = {f["name"]: f["public_record"] for f in json.loads(out)}
    assert record["muse_spark"] == record["nemotron_transcribe"] == "not verified"
    assert record["af3"] == "verified"
    table = (PUBLISHED_DIR.parents[3] / "docs" / "models.md").read_text()
    assert "| muse_spark |" in table and "not verified" in table.split("| muse_spark |")[1].split("\n")[0]
