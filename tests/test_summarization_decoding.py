"""Greedy and beam search: cache vs no cache, beam 1 vs greedy, a wide beam vs exhaustive search,
length limits, EOS handling, DecodeConfig and the repetition rules (n-gram, immediate repeat)."""

import itertools

import pytest
import torch

from dgmbook.summarization.decoding import (
    DecodeConfig,
    ban_immediate_repeat,
    ban_repeated_ngrams,
    banned_ngram_mask,
    beam_search,
    generate,
    greedy_search,
    sequence_logprobs,
)
from dgmbook.summarization.model import Seq2SeqConfig, Seq2SeqTransformer
from dgmbook.utils import torch_threads

PAD, BOS, EOS = 0, 1, 2

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_model(vocab_size: int, steps: int, seed: int = 0) -> Seq2SeqTransformer:
    """A small model trained for ``steps`` Adam steps to reverse its source (1-5 tokens, then EOS):
    random Transformers are degenerate (they repeat one token), trained ones are not. Returned in
    float64, in eval mode. One thread (the module-scoped fixtures that call this are set up before
    the ``one_thread`` fixture: on a busy machine a second thread spins, 2 s became 60-200 s)."""
    with torch_threads(1):
        return _toy_model(vocab_size, steps, seed)


def _toy_model(vocab_size: int, steps: int, seed: int) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(vocab_size=vocab_size, d_model=32, n_heads=4, n_enc_layers=1, n_dec_layers=1,
                        d_ff=64, max_len=32, dropout=0.0)
    model = Seq2SeqTransformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        n = torch.randint(1, 6, (32,), generator=g)
        src = torch.randint(3, vocab_size, (32, 5), generator=g)
        src[torch.arange(5)[None, :] >= n[:, None]] = PAD
        tgt_out = torch.full((32, 6), PAD)
        for i, k in enumerate(n.tolist()):
            tgt_out[i, :k] = src[i, :k].flip(0)
            tgt_out[i, k] = EOS
        tgt_in = torch.cat([torch.full((32, 1), BOS), tgt_out[:, :-1]], dim=1)
        loss = model.loss(src, tgt_in, tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.double().eval()


@pytest.fixture(scope="module")
def reverser() -> Seq2SeqTransformer:
    """Vocabulary 12, trained enough to reverse most inputs."""
    return toy_model(12, steps=300)


@pytest.fixture(scope="module")
def uncertain() -> Seq2SeqTransformer:
    """Vocabulary 6 (3 content tokens), barely trained: flat distributions where beam search and
    greedy search disagree."""
    return toy_model(6, steps=20, seed=1)


def sources(lengths, vocab_size=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(3, vocab_size, (n,), generator=g)
    return src


def test_the_toy_model_reverses(reverser):
    src = sources([5, 3, 4, 2, 5, 4, 3, 1], seed=3)
    out = greedy_search(reverser, src, max_new_tokens=8)
    correct = [seq == src[i][src[i] != PAD].flip(0).tolist() + [EOS] for i, seq in enumerate(out.tokens)]
    assert sum(correct) >= 6


def test_cache_and_no_cache_generate_the_same(reverser, uncertain):
    model, src = reverser, sources([5, 3, 4])
    for kw in (dict(num_beams=1), dict(num_beams=3, no_repeat_ngram_size=2),
               dict(num_beams=1, no_immediate_repeat=True), dict(num_beams=3, no_immediate_repeat=True)):
        with_cache = generate(model, src, max_new_tokens=12, use_cache=True, **kw)
        without = generate(model, src, max_new_tokens=12, use_cache=False, **kw)
        assert with_cache.tokens == without.tokens
        torch.testing.assert_close(with_cache.scores, without.scores)
    src = sources([5, 3], vocab_size=6)
    for num_beams in (1, 4):
        a = generate(uncertain, src, num_beams=num_beams, max_new_tokens=10, use_cache=True)
        b = generate(uncertain, src, num_beams=num_beams, max_new_tokens=10, use_cache=False)
        assert a.tokens == b.tokens


def test_greedy_scores_are_the_sequence_log_probabilities(reverser):
    model, src = reverser, sources([5, 2])
    out = greedy_search(model, src, max_new_tokens=10)
    torch.testing.assert_close(out.scores, sequence_logprobs(model, src, out.tokens))


@pytest.mark.parametrize("length_penalty, early_stopping", [(0.0, False), (1.0, True), (2.0, True)])
def test_beam_size_one_is_greedy(length_penalty, early_stopping, reverser, uncertain):
    for model, src in ((reverser, sources([5, 3, 4, 1])), (uncertain, sources([5, 3, 2], 6))):
        greedy = greedy_search(model, src, max_new_tokens=10)
        beam = beam_search(model, src, num_beams=1, max_new_tokens=10, length_penalty=length_penalty,
                           early_stopping=early_stopping)
        assert beam.tokens == greedy.tokens


def all_sequences(content: list[int], max_new: int) -> list[list[int]]:
    """Every sequence a search can return: content tokens then EOS (length <= max_new), or
    max_new content tokens without EOS."""
    seqs = [list(p) + [EOS] for n in range(max_new) for p in itertools.product(content, repeat=n)]
    return seqs + [list(p) for p in itertools.product(content, repeat=max_new)]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_wide_beam_finds_the_best_sequence_of_exhaustive_search(length_penalty, uncertain):
    vocab, max_new = 6, 4  # 3 content tokens + EOS: 3**3 = 27 live prefixes at most
    model, src = uncertain, sources([5, 3], vocab_size=vocab, seed=1)
    greedy = greedy_search(model, src, max_new_tokens=max_new)
    candidates = all_sequences([3, 4, 5], max_new)
    found_better = False
    for i in range(len(src)):
        rep = src[i : i + 1].expand(len(candidates), -1)
        logp = sequence_logprobs(model, rep, candidates)
        lengths = torch.tensor([len(c) for c in candidates], dtype=torch.double)
        score = logp / lengths**length_penalty
        best = candidates[int(score.argmax())]
        out = beam_search(model, src[i : i + 1], num_beams=27, max_new_tokens=max_new,
                          length_penalty=length_penalty, early_stopping="never")
        assert out.tokens[0] == best
        torch.testing.assert_close(out.scores[0], score.max())
        found_better |= best != greedy.tokens[i]
    # batched: the same answers for both examples at once
    both = beam_search(model, src, num_beams=27, max_new_tokens=max_new,
                       length_penalty=length_penalty, early_stopping="never")
    assert both.tokens == [beam_search(model, src[i : i + 1], num_beams=27, max_new_tokens=max_new,
                                       length_penalty=length_penalty, early_stopping="never").tokens[0]
                           for i in range(2)]
    assert found_better, "the test needs a case where greedy search is not optimal"


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_and_max_new_tokens_and_eos(num_beams, reverser):
    model, src = reverser, sources([5, 3, 4])
    out = generate(model, src, num_beams=num_beams, max_new_tokens=9, min_new_tokens=6)
    for seq in out.tokens:
        assert 6 < len(seq) <= 9  # EOS at the earliest as the 7th token
        assert EOS not in seq[:-1] and PAD not in seq and BOS not in seq
    assert all(len(s) <= 3 for s in generate(model, src, num_beams=num_beams, max_new_tokens=3).tokens)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_eos_ends_a_sequence_early(num_beams, reverser):
    src = sources([5, 3, 4, 1, 2])
    out = generate(reverser, src, num_beams=num_beams, max_new_tokens=30)
    assert all(s[-1] == EOS and s.count(EOS) == 1 and len(s) <= 7 for s in out.tokens)


def test_banned_ngram_mask_by_hand():
    generated = torch.tensor([[5, 6, 7, 5, 6], [5, 6, 7, 8, 9]])
    mask = banned_ngram_mask(generated, 3, 10)  # after "5 6", 7 would repeat "5 6 7"
    assert mask[0].nonzero().flatten().tolist() == [7]
    assert not mask[1].any()
    assert banned_ngram_mask(generated, 1, 10)[1].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]
    assert not banned_ngram_mask(generated[:, :2], 3, 10).any()


def test_repetition_rules_by_hand():
    """The rules as functions of (scores, generated): what our searches and hf.DecodingRule apply."""
    scores = torch.zeros(2, 10)
    generated = torch.tensor([[5, 6, 7, 5, 6], [5, 6, 7, 8, 9]])
    out = ban_repeated_ngrams(scores, generated, 3)
    assert out[0].isinf().nonzero().flatten().tolist() == [7] and not out[1].isinf().any()
    torch.testing.assert_close(out, scores.masked_fill(banned_ngram_mask(generated, 3, 10), -float("inf")))
    out = ban_immediate_repeat(scores, generated)
    # row 0: 6 would double itself, 7 the trigram 5 6 7; row 1: 9 would double itself
    assert out.isinf().nonzero().tolist() == [[0, 6], [0, 7], [1, 9]]
    # a word of two tokens ("company 's company 's"): the second "'s" is banned
    company, s = 3, 4
    out = ban_immediate_repeat(torch.zeros(1, 10), torch.tensor([[1, company, s, company]]))
    assert out[0].isinf().nonzero().flatten().tolist() == [company, s]  # company: n = 1
    assert torch.equal(ban_immediate_repeat(scores, generated[:, :0]), scores)  # nothing yet
    assert not scores.isinf().any()  # the scores given are left as they were


def test_decode_config_drives_generate(reverser):
    """DecodeConfig's fields are generate's keyword arguments; the default bans immediate repeats
    and repeated trigrams."""
    from dataclasses import asdict

    decode = DecodeConfig()
    assert (decode.num_beams, decode.no_repeat_ngram_size, decode.no_immediate_repeat) == (1, 3, True)
    src = sources([5, 3])
    out = generate(reverser, src, **asdict(DecodeConfig(num_beams=2, max_new_tokens=8)))
    assert out.tokens == generate(reverser, src, num_beams=2, max_new_tokens=8,
                                  no_repeat_ngram_size=3, no_immediate_repeat=True).tokens


def repetitive_model() -> Seq2SeqTransformer:
    """A model whose next token is almost always token 7 ("new new new ...")."""
    model = toy_model(12, steps=0)
    with torch.no_grad():
        model.dec_norm.weight.zero_()
        model.dec_norm.bias.copy_(model.tok_emb.weight[7] * 500)
    return model


@pytest.mark.parametrize("num_beams", [1, 3])
def test_repetition_is_avoidable(num_beams):
    model, src = repetitive_model(), sources([6, 4])
    plain = generate(model, src, num_beams=num_beams, max_new_tokens=10, min_new_tokens=10)
    assert plain.tokens[0] == [7] * 10
    out = generate(model, src, num_beams=num_beams, max_new_tokens=10, min_new_tokens=10,
                   no_repeat_ngram_size=2)
    for seq in out.tokens:
        bigrams = list(zip(seq, seq[1:]))
        assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_no_immediate_repeat(num_beams):
    """Trigram blocking lets "new new" through; the immediate-repeat rule does not, and with a
    model that always prefers token 7 it alternates 7 with the runner-up."""
    model, src = repetitive_model(), sources([6, 4])
    trigram = generate(model, src, num_beams=num_beams, max_new_tokens=10, min_new_tokens=10,
                       no_repeat_ngram_size=3)
    assert trigram.tokens[0][:2] == [7, 7]
    out = generate(model, src, num_beams=num_beams, max_new_tokens=10, min_new_tokens=10,
                   no_immediate_repeat=True)
    for seq in out.tokens:
        assert len(seq) == 10 and seq.count(7) == 5
        assert all(a != b for a, b in zip(seq, seq[1:]))
    beam1 = beam_search(model, src, num_beams=1, max_new_tokens=10, no_immediate_repeat=True)
    assert beam1.tokens == greedy_search(model, src, max_new_tokens=10, no_immediate_repeat=True).tokens


def test_argument_checks(reverser):
    model, src = reverser, sources([3])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, src, max_new_tokens=0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        generate(model, src, max_new_tokens=3, min_new_tokens=4)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(model, src, early_stopping="sometimes")
