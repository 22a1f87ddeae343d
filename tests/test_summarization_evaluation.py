"""ROUGE-1/2/L F1 on examples checked by hand, stemming, and the two multi-reference modes."""

import pytest

from dgmbook.summarization.evaluation import rouge_per_example, rouge_scores


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
