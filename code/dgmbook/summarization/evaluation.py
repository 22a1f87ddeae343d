"""ROUGE-1/2/L with Google's ``rouge-score`` package (Lin 2004), as summarization papers report it.

Every score is an F1 (``fmeasure``) times 100, averaged over examples, with the package's
tokenizer (lower-case, non-alphanumeric characters dropped) and its Porter stemmer on. ROUGE-L is
the sentence-level longest common subsequence (``rougeL``, not the summary-level ``rougeLsum``).

Several references per example (DialogSum's test set has three) are handled two ways:

* ``multi_ref="max"``   -- for each ROUGE type separately, the reference with the highest F1
  (what ``RougeScorer.score_multi`` does, and DialogSum's leaderboard uses);
* ``multi_ref="first"`` -- the first reference only (comparable with single-reference splits).
"""

from __future__ import annotations

from typing import Sequence

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
MULTI_REF = ("max", "first")


def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_example(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    multi_ref: str = "max",
) -> dict[str, list[float]]:
    """F1 x 100 of each prediction against its references (one sequence of strings per
    prediction): ``{"rouge1": [...], "rouge2": [...], "rougeL": [...]}``."""
    if multi_ref not in MULTI_REF:
        raise ValueError(f"multi_ref must be one of {MULTI_REF}, got {multi_ref!r}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    scorer = _scorer()
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"example {i}: references must be a non-empty list or tuple of strings, got {refs!r}"
            )
        if multi_ref == "first":
            scores = scorer.score(refs[0], pred)
        else:
            scores = scorer.score_multi(list(refs), pred)
        for t in ROUGE_TYPES:
            out[t].append(100.0 * scores[t].fmeasure)
    return out


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    multi_ref: str = "max",
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x 100 over the examples: ``{"rouge1", "rouge2", "rougeL"}``."""
    if not predictions:
        raise ValueError("no predictions to score")
    per = rouge_per_example(predictions, references, multi_ref)
    return {t: sum(v) / len(v) for t, v in per.items()}
