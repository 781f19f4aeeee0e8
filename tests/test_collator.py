"""Labels cover exactly the assistant's tokens (and its end-of-turn), unlike the guide's output_labels."""

from __future__ import annotations

import numpy as np
import torch

from audiotune.data.collator import IGNORE_INDEX, ConversationCollator
from audiotune.conversation import Example, prompt_messages
from tests.conftest import tone


def _examples():
    return [
        Example("a", prompt_messages(tone(1.0), "Describe the audio."), ["A steady tone."]),
        Example("b", prompt_messages(tone(2.5, 880), "Describe the audio.", system_prompt="Be brief."),
                ["A high-pitched whistle followed by a short pause."]),
    ]


def test_labels_are_exactly_the_assistant_tokens(micro_processor, family):
    examples = _examples()
    batch = ConversationCollator(micro_processor, family, training=True)(examples)
    tokenizer = micro_processor.tokenizer
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        expected = tokenizer.encode(example.target, add_special_tokens=False) + [
            tokenizer.convert_tokens_to_ids("<|im_end|>")]
        assert kept == expected
        # the kept positions are contiguous and sit at the end of the real (unpadded) sequence
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        assert positions.tolist() == list(range(positions[0].item(), positions[-1].item() + 1))
        length = int(batch["attention_mask"][row].sum())
        assert positions[-1].item() == length - 2  # followed only by the template's trailing "\n"


def test_right_padding_in_training_left_padding_for_generation(micro_processor, family):
    train_batch = ConversationCollator(micro_processor, family, training=True)(_examples())
    gen_batch = ConversationCollator(micro_processor, family, training=False)(_examples())
    assert train_batch["attention_mask"][0, 0] == 1 and train_batch["attention_mask"][0, -1] == 0
    assert gen_batch["attention_mask"][0, 0] == 0 and gen_batch["attention_mask"][0, -1] == 1
    assert "labels" not in gen_batch
    header = micro_processor.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert gen_batch["input_ids"][1, -len(header):].tolist() == header


def test_guide_output_labels_train_on_the_prompt(micro_processor, family):
    """The mistake we fix: the guide's labels include system and user text; ours do not."""
    examples = _examples()[:1]
    conversation = examples[0].conversation()
    guide = micro_processor.apply_chat_template([conversation], tokenize=True, add_generation_prompt=False,
                                                return_dict=True, output_labels=True)
    ours = ConversationCollator(micro_processor, family, training=True)(examples)
    guide_kept = int((guide["labels"] != IGNORE_INDEX).sum())
    ours_kept = int((ours["labels"] != IGNORE_INDEX).sum())
    prompt_ids = micro_processor.tokenizer.encode("You are a helpful assistant.", add_special_tokens=False)
    guide_tokens = guide["labels"][0][guide["labels"][0] != IGNORE_INDEX].tolist()
    assert all(t in guide_tokens for t in prompt_ids)  # system prompt trained on by the guide
    assert guide_kept > ours_kept + len(prompt_ids)
    assert torch.equal(ours["input_ids"], guide["input_ids"])  # same inputs, only the mask differs


def test_multi_turn_masks_every_assistant_turn(micro_processor, family):
    audio = tone(1.0)
    messages = prompt_messages(audio, "Describe the audio.") + [
        {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]},
        {"role": "user", "content": [{"type": "text", "text": "How long is it?"}]},
    ]
    example = Example("m", messages, ["About one second."])
    batch = ConversationCollator(micro_processor, family, training=True)([example])
    kept = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    end = micro_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    tok = micro_processor.tokenizer
    expected = (tok.encode("A tone.", add_special_tokens=False) + [end]
                + tok.encode("About one second.", add_special_tokens=False) + [end])
    assert kept == expected
    assert np.isfinite(batch["input_features"].numpy()).all()
