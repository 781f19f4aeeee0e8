"""The page: four tabs over one :class:`~audiotune.ui.common.Context`, and the launch that serves it.

Nothing blocks the whole page: Gradio's queue runs each event in a worker thread; generation,
evaluation and data checks each have their own concurrency limit, so a model generating in the
playground holds only the playground's queue while the other tabs (and the training timer) answer.
Gradio's ``allowed_paths`` is the root alone; players embed their audio, so no file route is needed.
"""

from __future__ import annotations

import logging
import os

from .common import Context, UiSettings
from .render import CSS

logger = logging.getLogger(__name__)

TITLE = "audiotune"


def build_app(settings: UiSettings):
    """The Gradio Blocks (not launched) and its context."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines; no telemetry from a tool
    import gradio as gr

    from . import tab_data, tab_evaluate, tab_playground, tab_train

    ctx = Context(settings)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## audiotune — fine-tune, evaluate and listen\nFiles are read and written under "
                    f"`{ctx.root}` only.", elem_id="at-header")
        with gr.Tabs():
            with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
                tab_playground.build(ctx)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                tab_evaluate.build(ctx)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                tab_train.build(ctx)
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                tab_data.build(ctx)
    demo.queue(default_concurrency_limit=4)
    return demo, ctx


def launch(settings: UiSettings, block: bool = True):
    """Serve the UI; with ``block=False`` return ``(demo, ctx, url)`` at once (tests, notebooks)."""
    import gradio as gr

    demo, ctx = build_app(settings)
    _, url, share_url = demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share,
                                    allowed_paths=[str(ctx.root.folder)], prevent_thread_lock=True, quiet=True,
                                    show_error=False, ssr_mode=False, mcp_server=False, css=CSS,
                                    theme=gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                                                   font_mono=["ui-monospace", "monospace"]),
                                    footer_links=["gradio"])
    logger.info("audiotune ui on %s (root %s)", share_url or url, ctx.root)
    if not block:
        return demo, ctx, url
    try:
        demo.block_thread()
    finally:
        ctx.jobs.stop_all()  # runs started here save a checkpoint and stop with the UI
        demo.close()
    return demo, ctx, share_url or url
