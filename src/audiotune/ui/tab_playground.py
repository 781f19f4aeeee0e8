"""Playground tab: a clip, a question, answers streaming in from the base and any adapters side by side."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from ..errors import ConfigError
from .common import Context, shown_errors
from .playground import ChatSettings, LocalBackend, RemoteBackend, conversation, load_clip, parse_adapters

PANES = 4  # answers side by side: the base and up to three adapters at once
STREAM_INTERVAL_S = 0.1  # at most ten page updates a second while an answer streams


def _backend_from_settings(ctx: Context) -> None:
    s = ctx.settings
    if s.server_url:
        ctx.backend = RemoteBackend(s.server_url, s.api_key)
    elif s.model:
        model = ctx.root.local_or_hub(s.model, "model")
        ctx.backend = LocalBackend.load(model, parse_adapters("\n".join(s.adapters), ctx.root), device=s.device)


def build(ctx: Context) -> None:
    _backend_from_settings(ctx)

    def names() -> list[str]:
        return ctx.backend.models() if ctx.backend else []

    def status() -> str:
        return (f"Using the {ctx.backend.describe()}." if ctx.backend
                else "No model yet: load a local model or connect to a server.")

    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="clip", elem_id="pg-audio")
            models = gr.CheckboxGroup(names(), value=names()[:1], label="answer with (side by side)",
                                      elem_id="pg-models")
            with gr.Accordion("generation settings", open=False, elem_id="pg-settings"):
                max_tokens = gr.Slider(1, 1024, value=64, step=1, label="max tokens", elem_id="pg-max-tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
                system = gr.Textbox(label="system prompt", placeholder="optional")
            with gr.Accordion("model", open=ctx.backend is None):
                backend_status = gr.Markdown(status(), elem_id="pg-status")
                with gr.Tab("local engine"):
                    model_path = gr.Textbox(label="base model (folder under the root, or a Hub id)",
                                            value=ctx.settings.model or "", elem_id="pg-model")
                    adapter_text = gr.Textbox(label="adapters (one NAME=PATH or PATH a line)", lines=2,
                                              value="\n".join(ctx.settings.adapters), elem_id="pg-adapters")
                    load = gr.Button("load", elem_id="pg-load")
                with gr.Tab("server URL"):
                    url = gr.Textbox(label="OpenAI-compatible server (audiotune serve, vLLM)",
                                     value=ctx.settings.server_url or "", placeholder="http://127.0.0.1:8000",
                                     elem_id="pg-url")
                    key = gr.Textbox(label="API key", type="password", value=ctx.settings.api_key or "")
                    connect = gr.Button("connect", elem_id="pg-connect")
        with gr.Column(scale=3):
            with gr.Row(equal_height=True):
                panes = [gr.Chatbot(label=(names()[i] if i < len(names()) else f"model {i + 1}"), height=420,
                                    visible=i < max(1, len(names()[:1])), elem_id=f"pg-chat-{i}",
                                    buttons=["copy"], feedback_options=None) for i in range(PANES)]
            with gr.Row():
                prompt = gr.Textbox(show_label=False, placeholder="Ask about the clip, e.g. Describe the audio.",
                                    scale=5, elem_id="pg-prompt", submit_btn=False)
                send = gr.Button("send", variant="primary", scale=1, elem_id="pg-send")
                clear = gr.Button("new chat", scale=1, elem_id="pg-clear")

    def layout(selected: list[str]):
        # A different set of models starts a new chat: each pane's history belongs to its model.
        return [gr.update(visible=i < len(selected) or (i == 0 and not selected), value=[],
                          label=selected[i] if i < len(selected) else f"model {i + 1}") for i in range(PANES)]

    models.change(layout, models, panes, queue=False)

    @shown_errors
    def load_local(path: str, adapter_lines: str):
        if not path.strip():
            raise ConfigError("Give a base model: a checkpoint folder under the root (e.g. one made by "
                              "`audiotune tiny`) or a Hub id.")
        model = ctx.root.local_or_hub(path, "model")
        adapters = parse_adapters(adapter_lines, ctx.root)
        gr.Info("loading the model…")
        ctx.backend = LocalBackend.load(model, adapters, device=ctx.settings.device)
        return gr.update(choices=names(), value=names()[:1]), status()

    @shown_errors
    def connect_remote(address: str, api_key: str):
        backend = RemoteBackend(address, api_key or None)
        backend.models()  # fails here, with the server's message, when it cannot be reached
        ctx.backend = backend
        return gr.update(choices=names(), value=names()[:1]), status()

    load.click(load_local, [model_path, adapter_text], [models, backend_status], concurrency_id="model",
               concurrency_limit=1)
    connect.click(connect_remote, [url, key], [models, backend_status])

    @shown_errors
    def answer(clip: str | None, question: str, selected: list[str], tokens: float, temp: float, p: float,
               system_prompt: str, *histories: list[dict[str, Any]]):
        if ctx.backend is None:
            raise ConfigError("No model yet: load a local model or connect to a server (the model panel).")
        if not selected:
            raise ConfigError("Pick at least one model to answer.")
        if not (question or "").strip():
            raise ConfigError("Type a question first.")
        settings = ChatSettings(int(tokens), float(temp), float(p)).checked()
        backend = ctx.backend
        waveform = load_clip(clip, backend.sampling_rate)
        chats = [list(h or []) for h in histories]
        for i in range(len(selected)):
            chats[i] = chats[i] + [{"role": "user", "content": question.strip()}]
        yield "", *chats  # the question moves from the box into the chats, once
        keep = gr.skip()  # later updates leave the box alone: the next question may be typed meanwhile
        for i, model in enumerate(selected[:PANES]):
            messages = conversation(chats[i], waveform, system_prompt)
            chats[i] = chats[i] + [{"role": "assistant", "content": ""}]
            shown = 0.0
            for text in backend.stream(model, messages, settings):
                chats[i][-1] = {"role": "assistant", "content": text}
                if time.monotonic() - shown >= STREAM_INTERVAL_S:  # every update resends the chats: pace them
                    shown = time.monotonic()
                    yield keep, *chats
            yield keep, *chats  # the finished answer
            if not chats[i][-1]["content"]:
                chats[i][-1] = {"role": "assistant", "content": "(empty answer)"}
                yield keep, *chats

    inputs = [audio, prompt, models, max_tokens, temperature, top_p, system, *panes]
    for trigger in (send.click, prompt.submit):  # send is off while an answer streams: one question at a time
        (trigger(lambda: gr.update(interactive=False), None, send, queue=False)
         .then(answer, inputs, [prompt, *panes], concurrency_id="model", concurrency_limit=1)
         .then(lambda: gr.update(interactive=True), None, send, queue=False))
    clear.click(lambda: [[] for _ in panes], None, panes, queue=False)
    audio.change(lambda _: [[] for _ in panes], audio, panes, queue=False)  # a new clip starts a new chat
