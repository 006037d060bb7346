"""A clip as the kit sees it, drawn for people: its normalised spectrogram and the two structured masked views that
pretraining draws (:func:`encoder.pretraining.draw_masks`: same masking config, same seeded generator), and a card
with its audio player, the question, the model's answer and caption and the reference.

Shared by the run report's gallery (``recipes/report.py``) and the web demo (:mod:`eval.demo_page`).
"""
from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping

import numpy as np
import torch

from encoder.features import num_frames, waveform_to_input
from encoder.masking import indices_to_grid
from encoder.pretraining import PretrainConfig, draw_masks

from .results import Html, figure_png, png_data_uri, wav_data_uri

__all__ = ["clip_card", "clip_spectrogram", "masked_views", "plot_clip_views"]


def clip_spectrogram(encoder, wave: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The encoder's normalised fbank of a whole 16 kHz clip, ``[T, mel_bins]``, padded up to a multiple of the
    patch size (so the patch grid covers it), and the clip's own frame count (the rest is padding)."""
    cfg = encoder.config
    fb = cfg.fbank_config()
    n = num_frames(int(wave.numel()), fb)
    frames = -(-n // cfg.patch_size) * cfg.patch_size
    return waveform_to_input(wave, dataclasses.replace(fb, target_frames=frames)), n


def masked_views(encoder, frames: int, pretrain: PretrainConfig | None = None,
                 step: int = 0) -> dict[str, np.ndarray | None]:
    """The two views pretraining draws at ``step`` (rank 0) on the patch grid of a ``frames``-frame input:
    ``{label: kept [n_time, n_freq] bool}`` (None: that view keeps everything)."""
    pretrain = pretrain or PretrainConfig()
    grid = encoder.config.to_encoder_config().grid(frames)
    keeps = draw_masks(pretrain, 1, grid, step, 0, "cpu")
    m = pretrain.masking
    out = {}
    for i, (kind, ratio, keep) in enumerate(zip((m.time_view, m.freq_view), (m.time_ratio, m.freq_ratio), keeps)):
        label = f"view {i + 1}: {kind} mask" + (f", drops {ratio:.0%}" if kind != "none" else "")
        out[label] = None if keep is None else indices_to_grid(keep, *grid)[0].numpy()
    return out


def plot_clip_views(spec: torch.Tensor, views: Mapping[str, np.ndarray | None], patch: int,
                    frames: int | None = None, frame_shift_s: float = 0.01, title: str = ""):
    """One figure: the spectrogram, then each view with its dropped patches greyed out; only the first ``frames``
    frames are drawn (the clip without its padding)."""
    import matplotlib
    from matplotlib.figure import Figure

    s = spec.detach().cpu().numpy()[: frames or None]  # [T, F]
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#d0d0d0")
    panels = [("spectrogram", None), *views.items()]
    fig = Figure(figsize=(8.0, 1.5 * len(panels) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    extent = (0.0, s.shape[0] * frame_shift_s, 0, s.shape[1])
    for ax, (label, keep) in zip(axes, panels):
        data = s.T
        if keep is not None:
            kept = np.repeat(np.repeat(keep, patch, 0), patch, 1)[: s.shape[0], : s.shape[1]]
            data = np.ma.masked_where(~kept.T, data)
        ax.imshow(data, origin="lower", aspect="auto", cmap=cmap, extent=extent, interpolation="nearest")
        ax.set_ylabel("mel bin", fontsize=8)
        ax.set_title(label, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (s)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def clip_card(title: str, wave: torch.Tensor, sample_rate: int, figure, rows: Mapping[str, str]) -> Html:
    """A report item: heading, ``<audio>`` player (WAV data URI), the views figure (PNG data URI) and a table of
    ``rows`` (question, answer, caption, reference...), all text escaped."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    markup = (f'<div class="clip"><h3>{html.escape(title)}</h3>'
              f'<audio controls preload="auto" src="{wav_data_uri(wave, sample_rate)}"></audio>'
              f'<img alt="spectrogram and masked views of {html.escape(title)}" '
              f'src="{png_data_uri(figure_png(figure, dpi=90))}"><table>{table}</table></div>')
    text = f"**{title}**: " + "; ".join(f"{k}: {v}" for k, v in rows.items())
    return Html(markup, text)
