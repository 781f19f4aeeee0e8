"""Offline batched generation with vLLM's engine; run by :class:`audiotune.engines.vllm_engine.VllmEngine`.

A standalone script for vLLM's own interpreter (its own torch and transformers, no audiotune installed):
``python vllm_worker.py request.json answers.json``. The request holds the model, an optional exported
LoRA adapter, sampling settings and OpenAI-format conversations (audio as WAV data URIs); the answers
file gets one string per conversation, in order, and the engine's load and generation times. vLLM renders each
conversation with the checkpoint's chat template and schedules them all together (continuous batching).
"""

import json
import os
import sys
import time

# Run as a script, this file's folder is first on sys.path, where audiotune's own modules (engines/) could shadow
# a package of the same name: the worker imports only from vLLM's environment.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def main(request_path: str, answers_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    request = json.loads(open(request_path).read())
    engine = {"model": request["model"], "max_num_seqs": request["max_num_seqs"], "limit_mm_per_prompt": {"audio": 1},
              "seed": 0}
    if request["cpu"]:
        engine.update(dtype="float32", enforce_eager=True, max_model_len=4096)
    lora = None
    if request["adapter"]:
        engine.update(enable_lora=True, max_lora_rank=request["lora_rank"], max_loras=1)
        lora = LoRARequest("adapter", 1, request["adapter"])
    if request.get("default_mm_loras"):  # the checkpoint's own audio LoRA, applied to every request with audio
        engine.update(enable_lora=True, max_lora_rank=request["lora_rank"], max_loras=1,
                      default_mm_loras=request["default_mm_loras"])
    for flag in request["extra_args"]:  # "key=value" engine arguments
        key, _, value = flag.partition("=")
        engine[key.lstrip("-").replace("-", "_")] = json.loads(value) if value[:1] in "[{0123456789tfn" else value
    start = time.perf_counter()
    llm = LLM(**engine)
    loaded = time.perf_counter()
    sampling = SamplingParams(**request["sampling"], seed=0)
    outputs = llm.chat(request["conversations"], sampling, lora_request=lora, use_tqdm=False)
    done = time.perf_counter()
    with open(answers_path, "w") as handle:
        json.dump({"answers": [output.outputs[0].text for output in outputs], "load_seconds": loaded - start,
                   "generate_seconds": done - loaded}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
