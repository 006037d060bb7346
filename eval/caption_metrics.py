"""Captioning metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, and SPICE / SPIDEr when SPICE can run.

Text goes through pycocoevalcap's ``PTBTokenizer`` (Stanford PTB tokenizer in Java, lower-cased, punctuation
removed) and its BLEU, METEOR (Java subprocess), ROUGE-L and CIDEr-D scorers (:func:`cider_d` says which
definition pycocoevalcap's CIDEr follows).

SPICE needs Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use; this module never triggers a
download. When they are absent, ``"spice"`` and ``"spider"`` are ``None`` and ``"missing"`` says why.

Requires ``java`` on PATH; without it :func:`caption_scores` raises ``RuntimeError``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["cider_d", "CaptionScorer", "caption_scores", "spice_status", "java_available"]


# --------------------------------------------------------------------------------------------------------------
# CIDEr-D
# --------------------------------------------------------------------------------------------------------------
def cider_d(gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]]) -> tuple[float, np.ndarray]:
    """CIDEr-D of tokenised captions: ``(corpus mean, per-item scores in the order of gts)``.

    pycocoevalcap's ``Cider`` (its ``method()`` says "CIDEr") is the COCO server's CIDEr-D (Vedantam et al., 2015):
    tf-idf n-gram vectors for n = 1..4 with document frequencies taken from the references of the scored set,
    candidate weights clipped at the reference's, a Gaussian length penalty with sigma = 6, mean over n, averaged
    over references, x10. Hence with a single item every idf is 0 and the score is 0: score a set, not a caption.
    The library cannot score a set whose references are all empty (no document frequencies); that score is 0.
    """
    from pycocoevalcap.cider.cider import Cider

    if not any(ref.split() for refs in gts.values() for ref in refs):
        return 0.0, np.zeros(len(gts))
    mean, per_item = Cider().compute_score(gts, res)
    return float(mean), np.asarray(per_item, dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------
# availability checks
# --------------------------------------------------------------------------------------------------------------
def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (the PTB tokenizer, METEOR and SPICE need it)."""
    return shutil.which("java") is not None


def spice_status() -> tuple[bool, str | None]:
    """``(available, reason_if_not)`` for SPICE, checked without downloading anything.

    SPICE runs when java is present and pycocoevalcap's ``spice/lib`` holds the Stanford CoreNLP 3.6.0 jar and its
    models jar (pycocoevalcap would otherwise try to download them from nlp.stanford.edu).
    """
    if not java_available():
        return False, "java not found on PATH"
    try:
        import pycocoevalcap.spice as spice_pkg
    except ImportError as exc:  # pragma: no cover - pycocoevalcap is a dependency
        return False, f"pycocoevalcap.spice cannot be imported: {exc}"
    spice_dir = Path(spice_pkg.__file__).resolve().parent
    needed = [
        spice_dir / "spice-1.0.jar",
        spice_dir / "lib" / "stanford-corenlp-3.6.0.jar",
        spice_dir / "lib" / "stanford-corenlp-3.6.0-models.jar",
    ]
    absent = [p.name for p in needed if not p.exists()]
    if absent:
        return False, (
            f"SPICE model files not present ({', '.join(absent)} under {spice_dir}); pycocoevalcap would download "
            "Stanford CoreNLP 3.6.0 on first use, which this harness does not do"
        )
    return True, None


# --------------------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------------------
def _validate(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | str]
) -> dict[Hashable, list[str]]:
    if not predictions:
        raise ValueError("caption_scores: predictions is empty")
    missing_refs = [k for k in predictions if k not in references]
    if missing_refs:
        raise ValueError(f"caption_scores: no references for {len(missing_refs)} id(s), e.g. {missing_refs[:3]}")
    missing_preds = [k for k in references if k not in predictions]
    if missing_preds:
        raise ValueError(f"caption_scores: no prediction for {len(missing_preds)} id(s), e.g. {missing_preds[:3]}")
    refs: dict[Hashable, list[str]] = {}
    for k, p in predictions.items():
        if not isinstance(p, str):
            raise ValueError(f"caption_scores: prediction for {k!r} is {type(p).__name__}, expected str")
        r = references[k]
        r = [r] if isinstance(r, str) else list(r)
        if not r or not all(isinstance(x, str) for x in r):
            raise ValueError(f"caption_scores: references for {k!r} must be a non-empty list of strings")
        refs[k] = r
    return refs


def _tokenize(texts: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenise ``{id: [text, ...]}``; a text the tokenizer drops (empty line) comes back as ``""``."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # one line per text: newlines inside a caption would shift every later line
    flat = {k: [{"caption": " ".join(t.split()) or "."} for t in v] for k, v in texts.items()}
    out = PTBTokenizer().tokenize(flat)
    result = {}
    for k, v in texts.items():
        toks = out.get(k, [])
        if len(toks) != len(v):
            raise RuntimeError(f"PTB tokenizer returned {len(toks)} line(s) for {len(v)} text(s) of id {k!r}")
        result[k] = toks
    return result


def _close_meteor(scorer) -> None:
    """Shut pycocoevalcap's METEOR Java subprocess down (stdin closed, process killed and reaped, pipes closed)."""
    proc = scorer.meteor_p
    with scorer.lock:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream and not stream.closed:
                stream.close()


class CaptionScorer:
    """Scores several prediction sets with one METEOR Java process (it takes seconds to load its paraphrase table).

    Use as a context manager, or call :meth:`close`; :func:`caption_scores` is the one-shot form::

        with CaptionScorer() as scorer:
            alm = scorer.score(alm_predictions, references)
            no_audio = scorer.score(baseline_predictions, references)

    ``spice``: as in :func:`caption_scores`.
    """

    def __init__(self, *, spice: bool | None = None) -> None:
        if not java_available():
            raise RuntimeError("caption_scores: java not found on PATH (the PTB tokenizer and METEOR need Java)")
        if spice is True:
            ok, reason = spice_status()
            if not ok:
                raise RuntimeError(f"caption_scores: SPICE requested but unavailable: {reason}")
        self.spice = spice
        self._meteor = None

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR subprocess (idempotent)."""
        if self._meteor is not None:
            _close_meteor(self._meteor)
            self._meteor = None

    def _meteor_score(self, gts: dict, res: dict) -> float:
        from pycocoevalcap.meteor.meteor import Meteor

        if self._meteor is None:
            self._meteor = Meteor()
        try:
            return float(self._meteor.compute_score(gts, res)[0])
        except Exception:
            self.close()  # a failed exchange leaves the protocol out of step: never reuse that process
            raise

    def score(
        self, predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | str]
    ) -> dict:
        """Corpus-level metrics of one prediction set; see :func:`caption_scores` for the returned dict."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge

        refs = _validate(predictions, references)
        ids = list(predictions)
        combined = {("ref", k): refs[k] for k in ids}
        combined.update({("hyp", k): [predictions[k]] for k in ids})
        tok = _tokenize(combined)  # one Java call for both sides
        # pycocoevalcap scorers index by key; positional keys let any hashable id through
        gts = {i: tok[("ref", k)] for i, k in enumerate(ids)}
        res = {i: tok[("hyp", k)] for i, k in enumerate(ids)}

        out: dict = {"num_items": len(ids), "missing": {}}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, b in enumerate(bleu, start=1):
            out[f"bleu_{n}"] = float(b)
        out["meteor"] = self._meteor_score(gts, res)
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        cider_mean, cider_items = cider_d(gts, res)
        out["cider_d"] = cider_mean
        out["per_item"] = {"cider_d": {k: float(v) for k, v in zip(ids, cider_items)}}

        out["spice"] = None
        out["spider"] = None
        if self.spice is False:
            out["missing"]["SPICE"] = "skipped by the caller (spice=False)"
        else:
            ok, reason = spice_status()
            if not ok:
                out["missing"]["SPICE"] = reason
            else:
                from pycocoevalcap.spice.spice import Spice

                # SPICE parses the text itself: give it the raw captions
                raw_gts = {i: refs[k] for i, k in enumerate(ids)}
                raw_res = {i: [predictions[k]] for i, k in enumerate(ids)}
                out["spice"] = float(Spice().compute_score(raw_gts, raw_res)[0])
                out["spider"] = (out["cider_d"] + out["spice"]) / 2.0
        if out["spider"] is None:
            out["missing"]["SPIDEr"] = "needs SPICE"
        return out


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str] | str],
    *,
    spice: bool | None = None,
) -> dict:
    """Corpus-level captioning metrics.

    Args:
        predictions: ``{id: generated caption}``.
        references: ``{id: [reference caption, ...]}`` for exactly the same ids (a single str is one reference).
        spice: ``None`` (default) runs SPICE if its model files are present; ``False`` skips it; ``True`` requires
            it and raises ``RuntimeError`` if it cannot run.

    Returns:
        ``{"bleu_1".."bleu_4", "meteor", "rouge_l", "cider_d": float, "spice": float | None,
        "spider": float | None, "missing": {metric: reason}, "num_items": int,
        "per_item": {"cider_d": {id: float}}}``. SPIDEr = (CIDEr-D + SPICE) / 2.
        Scores are on their native scales (BLEU/METEOR/ROUGE-L/SPICE in [0, 1], CIDEr-D in [0, 10]).
    """
    _validate(predictions, references)  # input errors before starting Java
    with CaptionScorer(spice=spice) as scorer:
        return scorer.score(predictions, references)
