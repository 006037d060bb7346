"""Captioning metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, and SPICE / SPIDEr when SPICE can run.

Text goes through pycocoevalcap's ``PTBTokenizer`` (Stanford PTB tokenizer in Java, lower-cased, punctuation
removed) and its BLEU, METEOR (Java subprocess) and ROUGE-L scorers. CIDEr-D is computed by :class:`CiderD` in this
module, written out so its definition is visible and tested (see its docstring).

SPICE needs Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use; this module never triggers a
download. When they are absent, ``"spice"`` and ``"spider"`` are ``None`` and ``"missing"`` says why.

Requires ``java`` on PATH; without it :func:`caption_scores` raises ``RuntimeError``.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["CiderD", "CaptionScorer", "caption_scores", "spice_status", "java_available"]


# --------------------------------------------------------------------------------------------------------------
# CIDEr-D
# --------------------------------------------------------------------------------------------------------------
def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    """Counts of all 1..n-grams of a token list (keys are tuples)."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D (Vedantam et al., 2015, "D" variant used by the COCO server and DCASE captioning).

    For a candidate ``c`` with references ``S = {s_1..s_m}``, for each n in 1..4:

        g^n(x)[w] = tf_x(w) * log(N / max(1, df(w)))        (tf-idf of every n-gram w of length n)
        CIDEr-D_n = 10/m * sum_j  exp(-(l_c - l_sj)^2 / (2 sigma^2))
                              * <min(g^n(c), g^n(s_j)), g^n(s_j)> / (||g^n(c)|| ||g^n(s_j)||)

    and CIDEr-D = mean over n of CIDEr-D_n (so the whole score is x10 scaled, range roughly [0, 10]).

    * ``df(w)``: number of items whose reference set contains ``w``; ``N``: number of items. The document
      frequencies come from the references of the evaluated set itself (the standard "corpus" mode); hence with a
      single item every idf is 0 and the score is 0: score a set, not one caption.
    * ``min(., .)`` clips the candidate's n-gram weights at the reference's (repeating a word does not pay).
    * ``l`` are lengths in tokens; sigma = 6.
    * A norm of zero (e.g. no 4-grams in a 3-word caption) contributes 0 for that n.

    Inputs are already tokenised strings (space-separated), like pycocoevalcap scorers:
    ``compute_score(gts: {id: [ref, ...]}, res: {id: [candidate]}) -> (mean, per_item_scores)``.
    """

    def __init__(self, n: int = 4, sigma: float = 6.0) -> None:
        if n < 1:
            raise ValueError(f"CiderD: n must be >= 1, got {n}")
        if sigma <= 0:
            raise ValueError(f"CiderD: sigma must be > 0, got {sigma}")
        self.n = n
        self.sigma = float(sigma)

    def method(self) -> str:
        return "CIDEr-D"

    def _vec(self, counts: Counter, df: Counter, log_n: float) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = tf * (log_n - math.log(max(1.0, df[gram])))
            vec[k][gram] = w
            norm[k] += w * w
        return vec, [math.sqrt(x) for x in norm]

    def compute_score(
        self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]
    ) -> tuple[float, np.ndarray]:
        if set(gts) != set(res):
            raise ValueError("CiderD: gts and res must have the same ids")
        if not gts:
            raise ValueError("CiderD: nothing to score")
        ids = list(gts)
        ref_tokens = {}
        for i in ids:
            if len(res[i]) != 1:
                raise ValueError(f"CiderD: item {i!r} needs exactly one candidate, got {len(res[i])}")
            if len(gts[i]) == 0:
                raise ValueError(f"CiderD: item {i!r} has no reference")
            ref_tokens[i] = [r.split() for r in gts[i]]

        ref_counts = {i: [_ngrams(t, self.n) for t in ref_tokens[i]] for i in ids}
        df: Counter = Counter()
        for i in ids:
            df.update(set().union(*[set(c) for c in ref_counts[i]]))
        log_n = math.log(float(len(ids)))

        scores = np.zeros(len(ids))
        for row, i in enumerate(ids):
            cand_tokens = res[i][0].split()
            vec_c, norm_c = self._vec(_ngrams(cand_tokens, self.n), df, log_n)
            total = np.zeros(self.n)
            for toks, counts in zip(ref_tokens[i], ref_counts[i]):
                vec_r, norm_r = self._vec(counts, df, log_n)
                penalty = math.exp(-((len(cand_tokens) - len(toks)) ** 2) / (2.0 * self.sigma**2))
                for k in range(self.n):
                    if norm_c[k] == 0.0 or norm_r[k] == 0.0:
                        continue
                    dot = sum(min(w, vec_r[k][g]) * vec_r[k][g] for g, w in vec_c[k].items() if g in vec_r[k])
                    total[k] += penalty * dot / (norm_c[k] * norm_r[k])
            scores[row] = 10.0 * total.mean() / len(ref_tokens[i])
        return float(scores.mean()), scores


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
        cider_mean, cider_items = CiderD().compute_score(gts, res)
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
