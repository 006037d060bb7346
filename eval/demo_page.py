"""The web demo's page (Gradio Blocks) for a loaded audio-language model: upload or record a clip, see its spectrogram
and the two masked views the encoder trains on, ask a question, read the answer and a caption.

:func:`build_demo` only builds the page; ``recipes/demo.py`` (``mosaic-alm demo ARTIFACT``) loads the artifact,
bounds the queue and serves it. A clip that cannot be used (not audio, empty, longer than ``max_seconds``) gets one
line in the page's status field instead of answers; nothing is raised into the server.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_QUESTION = "What can be heard in this clip?"
MAX_QUESTION_CHARS = 500


def _fonts():
    # system fonts only: the page must not reach for web fonts (the demo runs offline)
    return ["system-ui", "sans-serif"], ["ui-monospace", "monospace"]


def demo_theme():
    """Gradio's default look with local fonts (no web-font requests)."""
    import gradio as gr

    sans, mono = _fonts()
    return gr.themes.Default(font=sans, font_mono=mono)


def answer_clip(model, audio_path: str | None, question: str | None, *, max_seconds: float = 30.0,
                max_new_tokens: int = 32):
    """What the page shows for one request: (views image, answer, caption, status line). A bad clip returns no
    image or text and the reason in the status line."""
    import torch

    from encoder.features import SAMPLE_RATE, AudioError, load_audio
    from mosaic_alm.generation import ask, caption

    from .gallery import clip_spectrogram, masked_views, plot_clip_views
    from .results import figure_png

    if not audio_path:
        return None, "", "", "Upload or record a clip first."
    name = Path(audio_path).name
    try:
        wave = load_audio(audio_path, max_seconds=max_seconds)
    except AudioError as exc:  # the reason without the server's temporary path
        return None, "", "", f"Cannot use {name}: {exc.reason.replace(str(audio_path), name).rstrip('.')}."
    question = " ".join((question or "").split())[:MAX_QUESTION_CHARS] or DEFAULT_QUESTION
    with torch.no_grad():
        spec, n = clip_spectrogram(model.encoder, wave)
    views = masked_views(model.encoder, spec.shape[0])
    fig = plot_clip_views(spec, views, model.encoder.config.patch_size, n)
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(figure_png(fig, dpi=80)))
    answer = ask(model, wave, question, max_new_tokens=max_new_tokens)
    cap = caption(model, wave, max_new_tokens=max_new_tokens)
    heard = model.cfg.audio.target_frames / 100.0
    status = (f"{name}: {wave.numel() / SAMPLE_RATE:.1f} s clip; the model hears its first {heard:.2f} s "
              f"(greedy decoding).")
    return image, answer, cap, status


def build_demo(model, title: str = "mosaic-alm demo", *, max_seconds: float = 30.0, max_new_tokens: int = 32):
    """The Gradio Blocks of the demo for ``model`` (an AudioLanguageModel with audio)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nUpload or record a clip (at most {max_seconds:g} s), ask a question about it. "
                    "The figure shows the clip's spectrogram and the two structured masked views the encoder is "
                    "pretrained on (grey patches are dropped).")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="clip",
                                 elem_id="clip")
                question = gr.Textbox(value=DEFAULT_QUESTION, label="question", max_length=MAX_QUESTION_CHARS,
                                      elem_id="question")
                button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                answer = gr.Textbox(label="answer", interactive=False, elem_id="answer")
                cap = gr.Textbox(label="caption", interactive=False, elem_id="caption")
        views = gr.Image(label="spectrogram and masked views", type="pil", format="png", interactive=False,
                         elem_id="views")

        def respond(path, q):
            return answer_clip(model, path, q, max_seconds=max_seconds, max_new_tokens=max_new_tokens)

        outputs = [views, answer, cap, status]
        button.click(respond, [audio, question], outputs, api_name="ask")
        question.submit(respond, [audio, question], outputs)
    return demo


__all__ = ["DEFAULT_QUESTION", "answer_clip", "build_demo", "demo_theme"]
