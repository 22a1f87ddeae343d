"""Evaluating summarizers: ROUGE, the one evaluation loop of the three systems, repetition
statistics, and the evaluations of a recorded full run.

ROUGE
-----
ROUGE-1/2/L with Google's ``rouge-score`` package (Lin 2004), as summarization papers report it.
Every score is an F1 (``fmeasure``) times 100, averaged over examples, with the package's
tokenizer (lower-case, non-alphanumeric characters dropped) and its Porter stemmer on. ROUGE-L is
the sentence-level longest common subsequence (``rougeL``, not the summary-level ``rougeLsum``).

Several references per example (DialogSum's test set has three) are handled two ways:

* ``multi_ref="max"``   -- for each ROUGE type separately, the reference with the highest F1
  (what ``RougeScorer.score_multi`` does, and DialogSum's leaderboard uses);
* ``multi_ref="first"`` -- the first reference only (comparable with single-reference splits).

Systems
-------
A *system* is anything that maps a list of documents to a list of summaries (:data:`System`): the
from-scratch model, BERT2BERT and the prompted LLM each give one (their modules' ``summarize``
with the model and settings bound). :func:`evaluate` runs a system on examples and scores it, so
that all three fill the same table; each system's module has an ``evaluate`` that binds its
``summarize`` and calls this one (a function of the system's module, so that the run cache keys
an evaluation by that system's code). :func:`full_run_evaluation` is what a recorded full run
(``python -m dgmbook full ...``) evaluates: DialogSum's test set greedily and with 4 beams, and
the XSum sample with 4 beams.

Repetition
----------
How degenerate a set of summaries is: :func:`repetition_stats` counts the summaries in which a
token follows itself (re-tokenized by the model's tokenizer) and the different summaries;
:func:`doubled_words` counts the summaries that write a word, or a speaker tag, twice in a row.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Sequence

from rouge_score import rouge_scorer
from tokenizers import Tokenizer

from .data import SummaryExample, load_dialogsum, load_xsum_sample
from .decoding import DecodeConfig

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


# ---------------------------------------------------------------------------------------------
# systems

System = Callable[[Sequence[str]], list[str]]  # documents -> one summary per document, in order


def evaluate(system: System, examples: Sequence[SummaryExample]) -> dict[str, Any]:
    """Summaries of ``examples`` by ``system`` and their ROUGE-1/2/L (F1 x 100) under both
    multi-reference rules::

        {"rouge_max": {"rouge1", "rouge2", "rougeL"}, "rouge_first": {...}, "predictions": [...],
         "mean_words": float, "seconds_per_example": float}

    ``rouge_max``: the best of an example's references per ROUGE type; ``rouge_first``: the first
    (with one reference per example the two agree). ``seconds_per_example`` is the system's wall
    time per document."""
    t0 = time.perf_counter()
    preds = system([ex.document for ex in examples])
    seconds = (time.perf_counter() - t0) / len(examples)
    refs = [ex.references for ex in examples]
    return {
        "rouge_max": rouge_scores(preds, refs, multi_ref="max"),
        "rouge_first": rouge_scores(preds, refs, multi_ref="first"),
        "predictions": preds,
        "mean_words": sum(len(p.split()) for p in preds) / len(preds),
        "seconds_per_example": seconds,
    }


# ---------------------------------------------------------------------------------------------
# repetition


def longest_token_run(tokenizer: Tokenizer, text: str) -> int:
    """The most times one token follows itself in a row in ``text`` (1: no token repeated back
    to back; 0: empty text). Degenerate outputs such as "the new new new job" score 3. Tokens
    are compared by id (a speaker tag's token text includes the space it absorbed, or not)."""
    ids, best, run = tokenizer.encode(text).ids, 0, 0
    for i, tok in enumerate(ids):
        run = run + 1 if i > 0 and tok == ids[i - 1] else 1
        best = max(best, run)
    return best


def repetition_stats(tokenizer: Tokenizer, predictions: Sequence[str]) -> dict[str, Any]:
    """How degenerate a set of summaries is: ``repeated`` (summaries with a token repeated back to
    back), ``longest_run`` (the longest such run), ``distinct`` (different summaries) and ``n``."""
    runs = [longest_token_run(tokenizer, p) for p in predictions]
    return {"repeated": sum(r > 1 for r in runs), "longest_run": max(runs, default=0),
            "distinct": len(set(predictions)), "n": len(predictions)}


_DOUBLED_WORD = re.compile(r"(?<!\S)(\S+) \1(?!\S)")  # a word, a space, the same word
_DOUBLED_TAG = re.compile(r"(#Person\d+#) \1(?!\S)")  # a speaker tag, a space, the same tag


def doubled_words(predictions: Sequence[str]) -> dict[str, int]:
    """How many of the summaries write a word twice in a row, separated by one space ("the new
    new job": ``word``), and how many of them a speaker tag ("#Person1# #Person1#":
    ``speaker_tag``). Words are what lies between spaces, punctuation included."""
    return {"word": sum(bool(_DOUBLED_WORD.search(p)) for p in predictions),
            "speaker_tag": sum(bool(_DOUBLED_TAG.search(p)) for p in predictions)}


# ---------------------------------------------------------------------------------------------
# the full runs

EXAMPLES_RECORDED = 25  # summaries of the first examples kept per evaluation in a results file
# (name, test set, decoding) of each evaluation of a full run
FULL_RUN_EVALUATIONS = (
    ("dialogsum_greedy", "dialogsum-test", DecodeConfig()),
    ("dialogsum_beam4", "dialogsum-test", DecodeConfig(num_beams=4)),
    ("xsum_beam4", "xsum-sample", DecodeConfig(num_beams=4)),
)


def full_run_evaluation(
    system_for: Callable[[DecodeConfig], System],
    keep: Sequence[str] = ("rouge_max", "rouge_first", "mean_words"),
    repetition_tokenizer: Tokenizer | None = None,
) -> dict[str, dict[str, Any]]:
    """The evaluations of a recorded full run (:data:`FULL_RUN_EVALUATIONS`): ROUGE on the
    DialogSum test set (greedy and 4 beams) and on the XSum sample (4 beams), by the system that
    ``system_for`` makes for each decoding. For each: the ``keep`` entries of :func:`evaluate`'s
    result, the :func:`repetition_stats` of its summaries if a ``repetition_tokenizer`` is given,
    and its first :data:`EXAMPLES_RECORDED` summaries (``examples``)."""
    test_sets = {"dialogsum-test": load_dialogsum("test"), "xsum-sample": load_xsum_sample()}
    out: dict[str, dict[str, Any]] = {}
    for name, test_set, decode in FULL_RUN_EVALUATIONS:
        scores = evaluate(system_for(decode), test_sets[test_set])
        out[name] = {k: scores[k] for k in keep}
        if repetition_tokenizer is not None:
            out[name]["repetition"] = repetition_stats(repetition_tokenizer, scores["predictions"])
        out[name]["examples"] = scores["predictions"][:EXAMPLES_RECORDED]
    return out
