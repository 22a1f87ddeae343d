"""Evaluation (dgmbook.summarization.evaluation): ROUGE-1/2/L F1 on examples checked by hand,
stemming, and the two multi-reference modes; the one evaluation loop of every system; repetition
statistics; the evaluations of a full run."""

import pytest

from dgmbook.summarization import evaluation
from dgmbook.summarization.data import SummaryExample
from dgmbook.summarization.decoding import DecodeConfig
from dgmbook.summarization.evaluation import rouge_per_example, rouge_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_hand_checked_with_stemming():
    # reference "the cats are running home" -> the cat are run home (5 tokens, Porter stemmer)
    # prediction "The cat ran home." -> the cat ran home (4 tokens; "ran" is not stemmed to "run")
    # unigrams: the, cat, home in common; bigram: "the cat"; LCS: the cat home
    got = rouge_scores(["The cat ran home."], [("the cats are running home",)])
    assert got["rouge1"] == pytest.approx(100 * f1(3 / 4, 3 / 5))
    assert got["rouge2"] == pytest.approx(100 * f1(1 / 3, 1 / 4))
    assert got["rougeL"] == pytest.approx(100 * f1(3 / 4, 3 / 5))


def test_order_matters_for_rouge2_and_rougeL_only():
    # reference A B C D, prediction A C B D E: all 4 reference words occur, no bigram does,
    # the longest common subsequence has 3 words (A B D).
    got = rouge_scores(["a c b d e"], [["a b c d"]])
    assert got == pytest.approx({"rouge1": 100 * f1(4 / 5, 1.0), "rouge2": 0.0,
                                 "rougeL": 100 * f1(3 / 5, 3 / 4)})


def test_multi_reference_max_picks_the_best_reference_per_type():
    # against "a b x y": R1 2/4 both ways, R2 "a b" 1/3 both ways, LCS "a b"
    # against "d c b a q": R1 P=1, R=4/5, no common bigram, LCS of one word
    pred, refs = ["a b c d"], [("a b x y", "d c b a q")]
    best = rouge_scores(pred, refs, multi_ref="max")
    assert best == pytest.approx({"rouge1": 100 * f1(1.0, 4 / 5), "rouge2": 100 / 3, "rougeL": 50.0})
    first = rouge_scores(pred, refs, multi_ref="first")
    assert first == pytest.approx({"rouge1": 50.0, "rouge2": 100 / 3, "rougeL": 50.0})


def test_mean_over_examples_and_per_example_scores():
    preds = ["the cat sat", "nothing in common"]
    refs = [("the cat sat",), ("a dog barked",)]
    per = rouge_per_example(preds, refs)
    assert per["rouge1"] == pytest.approx([100.0, 0.0])
    assert rouge_scores(preds, refs) == pytest.approx({"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0})


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="multi_ref"):
        rouge_scores(["a"], [("a",)], multi_ref="mean")
    with pytest.raises(ValueError, match="2 predictions but 1"):
        rouge_scores(["a", "b"], [("a",)])
    with pytest.raises(ValueError, match="non-empty list or tuple"):
        rouge_scores(["a"], ["a"])  # a bare string instead of a list of references


EXAMPLES = [
    SummaryExample("a", "the cat sat on the mat", ("the cat sat", "a cat was sitting")),
    SummaryExample("b", "dogs bark at night", ("dogs bark",)),
]


def test_evaluate_runs_any_system_and_scores_it():
    """A system is any function from documents to summaries; evaluate gives it every document at
    once, in order, and scores its summaries as rouge_scores does."""
    seen = []

    def first_three_words(documents):
        seen.append(list(documents))
        return [" ".join(d.split()[:3]) for d in documents]

    scores = evaluation.evaluate(first_three_words, EXAMPLES)
    assert seen == [[ex.document for ex in EXAMPLES]]
    assert scores["predictions"] == ["the cat sat", "dogs bark at"]
    refs = [ex.references for ex in EXAMPLES]
    assert scores["rouge_max"] == rouge_scores(scores["predictions"], refs, multi_ref="max")
    assert scores["rouge_first"] == rouge_scores(scores["predictions"], refs, multi_ref="first")
    assert scores["mean_words"] == 3.0 and scores["seconds_per_example"] >= 0


def test_repetition_statistics(bpe):
    assert evaluation.longest_token_run(bpe, "") == 0
    assert evaluation.longest_token_run(bpe, "the new job") == 1
    assert evaluation.longest_token_run(bpe, "the new new new job") == 3
    stats = evaluation.repetition_stats(bpe, ["the new new job", "a job", "a job"])
    assert stats == {"repeated": 1, "longest_run": 2, "distinct": 2, "n": 3}
    # a doubled speaker tag is one token twice (the tag takes in the space in front of it)
    assert evaluation.longest_token_run(bpe, "#Person1# #Person1# meet") == 2
    assert evaluation.longest_token_run(bpe, "they meet #Person1# #Person1#") == 2


def test_doubled_words():
    summaries = ["the new new job", "#Person1# #Person1# talk", "#Person2# tells #Person1#",
                 "a word,word", "done. done.", "#Person1# #Person1#'s"]
    assert evaluation.doubled_words(summaries) == {"word": 3, "speaker_tag": 1}
    assert evaluation.doubled_words([]) == {"word": 0, "speaker_tag": 0}


def test_full_run_evaluation(monkeypatch, bpe):
    """Three evaluations (DialogSum's test set greedy and with 4 beams, XSum with 4 beams), each
    with the entries asked for, repetition statistics if a tokenizer is given, and the first
    EXAMPLES_RECORDED summaries."""
    dialogues = [SummaryExample(str(i), f"dialogue {i}", (f"summary {i}",)) for i in range(30)]
    articles = [SummaryExample(str(i), f"article {i}", (f"news {i}",)) for i in range(3)]
    monkeypatch.setattr(evaluation, "load_dialogsum", lambda split: split == "test" and dialogues)
    monkeypatch.setattr(evaluation, "load_xsum_sample", lambda: articles)
    decodes = []

    def system_for(decode):
        decodes.append(decode)
        return lambda documents: [f"{decode.num_beams} beams on {d}" for d in documents]

    out = evaluation.full_run_evaluation(system_for, repetition_tokenizer=bpe)
    assert decodes == [DecodeConfig(), DecodeConfig(num_beams=4), DecodeConfig(num_beams=4)]
    assert list(out) == ["dialogsum_greedy", "dialogsum_beam4", "xsum_beam4"]
    greedy = out["dialogsum_greedy"]
    assert list(greedy) == ["rouge_max", "rouge_first", "mean_words", "repetition", "examples"]
    assert greedy["examples"] == [f"1 beams on dialogue {i}" for i in range(evaluation.EXAMPLES_RECORDED)]
    assert greedy["repetition"]["n"] == 30 and out["xsum_beam4"]["examples"][0] == "4 beams on article 0"
    plain = evaluation.full_run_evaluation(system_for, keep=("rouge_first",))
    assert list(plain["xsum_beam4"]) == ["rouge_first", "examples"]
