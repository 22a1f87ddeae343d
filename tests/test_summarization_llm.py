"""Prompting SmolLM2-135M-Instruct (dgmbook.summarization.llm): templates, post-processing,
offline loading, deterministic summaries and their evaluation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dgmbook.summarization import llm
from dgmbook.summarization.data import SummaryExample

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec(llm.SMOLLM2_PACKAGE) is None,
    reason=f"SmolLM2-135M-Instruct comes from the pip package {llm.SMOLLM2_PIN}, not installed",
)

TEXT = (
    "#Person1#: Hi, I'd like to book a table for two tonight.\n"
    "#Person2#: Certainly. What time would you like?\n"
    "#Person1#: Seven o'clock, please.\n"
    "#Person2#: Done. A table for two at seven."
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_source_prompt_word_for_word():
    expected = "Summarize this document in one sentence: The cat sat."
    assert llm.ONE_SENTENCE.format("  The cat sat.\n") == expected
    assert llm.ONE_SENTENCE.messages("x") == [
        {"role": "user", "content": "Summarize this document in one sentence: x"}
    ]


def test_templates_fill_the_slot_only():
    braces = "a {document} and {0} in the text"
    assert braces in llm.DIALOGUE.format(braces)  # the document is inserted as it is, not formatted
    expected = "#Person1#: Hi.\n\nSummarize the conversation above in one sentence."
    assert llm.DIALOGUE.format("#Person1#: Hi.") == expected
    with pytest.raises(ValueError, match="slot"):
        llm.PromptTemplate("bad", "Summarize this.")


def test_shots_are_earlier_turns_of_the_chat():
    system = llm.PromptTemplate("t", "Doc: {document}", system="Be brief.")
    shot = SummaryExample("s", "Shot document.", ("Shot summary.", "Another reference."))
    messages = system.with_shots([shot]).messages("New document.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Doc: Shot document."},
        {"role": "assistant", "content": "Shot summary."},
        {"role": "user", "content": "Doc: New document."},
    ]
    assert system.with_shots([shot]).name == "t, 1-shot" and system.shots == ()


def test_dialogue_few_shot_teaches_the_speaker_tags():
    template = llm.dialogue_few_shot(2)
    assert template.user == llm.DIALOGUE.user and len(template.shots) == 2
    assert len(template.shots[0][0]) <= len(template.shots[1][0])
    assert all("#Person1#" in summary and "#Person2#" in summary for _, summary in template.shots)


def test_postprocess():
    assert llm.postprocess("  A  summary.\n") == "A summary."
    text = "#Person1# books a table for 7 p.m. tonight. The waiter agrees! More text"
    assert llm.postprocess(text, first_sentence=True) == "#Person1# books a table for 7 p.m. tonight."
    assert llm.postprocess("No end", first_sentence=True) == "No end"


@needs_smollm2
def test_chat_prompt_and_truncation():
    _, tokenizer = llm.load_smollm2(torch.bfloat16)  # the weights summarize uses
    prompt = llm.chat_prompt(tokenizer, llm.ONE_SENTENCE, "The cat sat.")
    assert prompt.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nSummarize this document in one sentence: The cat sat.<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    own_system = llm.chat_prompt(tokenizer, llm.PromptTemplate("t", "{document}", system="Be brief."), "x")
    assert own_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    cut = llm.truncate_document(tokenizer, TEXT, 5)
    assert TEXT.startswith(cut) and len(tokenizer(cut)["input_ids"]) == 5
    assert llm.truncate_document(tokenizer, TEXT, None) == TEXT


@needs_smollm2
def test_smollm2_summarizes_deterministically():
    model, tokenizer = llm.load_smollm2(torch.bfloat16)
    assert tokenizer.padding_side == "left" and not model.training
    assert next(model.parameters()).dtype == torch.bfloat16  # summarize's default (bf16=True)
    batched = llm.summarize([TEXT, "Short."], llm.ONE_SENTENCE, max_new_tokens=24, batch_size=2)
    once, twice = (llm.summarize([TEXT], llm.ONE_SENTENCE, max_new_tokens=24) for _ in range(2))
    assert len(batched) == 2 and all(batched)
    assert once[0] and once == twice  # greedy decoding: the same summary every time
    assert len(tokenizer(once[0])["input_ids"]) <= 24 + 1


@needs_smollm2
def test_evaluate_scores_the_prompted_model():
    """The shared evaluation loop with SmolLM2 as the system: as many summaries as examples, the
    same as summarize gives, and ROUGE against their references."""
    examples = [SummaryExample("t", TEXT, ("#Person1# books a table for two at seven.",)),
                SummaryExample("s", "Short.", ("Short.",))]
    scores = llm.evaluate(examples, llm.ONE_SENTENCE, max_new_tokens=16, batch_size=2)
    assert scores["predictions"] == llm.summarize([ex.document for ex in examples], llm.ONE_SENTENCE,
                                                  max_new_tokens=16, batch_size=2)
    assert set(scores["rouge_first"]) == {"rouge1", "rouge2", "rougeL"}
    assert scores["seconds_per_example"] > 0


def test_token_batches_bound_the_padded_size():
    from dgmbook.summarization.llm import token_batches

    lengths = [1000, 900, 300, 290, 280, 100, 90, 80, 70, 60]
    batches = token_batches(lengths, batch_size=4, max_tokens=2048)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each once
    assert batches[0] == [0, 1]  # 2 x 1000 fits, 3 x 1000 does not
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 2048)
    assert token_batches([5000], 8, 2048) == [[0]]  # a longer prompt alone
