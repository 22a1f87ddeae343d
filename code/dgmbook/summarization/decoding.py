"""Greedy and batched beam search for :class:`dgmbook.summarization.model.Seq2SeqTransformer`, with
the KV cache or without it (the reference path: every step re-runs the decoder on the whole prefix);
:class:`DecodeConfig`, the decoding settings that all three summarizers of the book share.

Scores are log-probabilities of the model, ``log p(y_t | y_<t, x)`` summed over the generated
tokens, EOS included. Before a token is chosen, its log-probabilities are edited, never
renormalised (as Hugging Face's logits processors do):

* ``<pad>`` and ``<s>`` are never generated;
* EOS is forbidden before ``min_new_tokens`` tokens;
* ``no_repeat_ngram_size = n > 0`` forbids any token that would repeat an n-gram already in the
  generated sequence (Paulus et al. 2018): the cure for "new new new ..." (:func:`ban_repeated_ngrams`);
* ``no_immediate_repeat`` forbids any token that would end the output with the same n-gram
  twice in a row, for n up to :data:`IMMEDIATE_REPEAT_MAX` tokens: the token just generated
  ("the new new job", "#Person1# #Person1#") and a word of several tokens doubled
  ("company's company's": ``company 's company 's``). Trigram blocking allows both: a doubled
  token is a bigram, and two different trigrams make a doubled two-token word
  (:func:`ban_immediate_repeat`).

The two repetition rules are functions ``rule(scores [N, V], generated [N, t]) -> scores`` of the
scores of the next token and the tokens generated so far, so that Hugging Face's ``generate`` can
apply them too (:class:`dgmbook.summarization.hf.DecodingRule`).

Beam search (``num_beams = K``), batched over examples and beams: at each step every live beam is
extended by every token, the ``2K`` best candidates per example are kept, those that end in EOS
(among the first ``K``) become finished hypotheses, and the ``K`` best others are the next beams.
Finished hypotheses are ranked by the length-normalised score of Hugging Face (Wu et al. 2016
use ``((5 + L) / 6) ** alpha`` instead)::

    score(y) = sum_t log p(y_t | y_<t, x) / L ** length_penalty,   L = len(y), EOS included

so ``length_penalty > 0`` favours longer summaries and ``0`` ranks by the raw log-probability.
An example is done when it has ``K`` finished hypotheses and (``early_stopping``)

* ``True``    -- nothing more (stop at once);
* ``False``   -- the best live beam, scored at its current length, cannot beat the worst finished
  one (Hugging Face's default heuristic);
* ``"never"`` -- no live beam can beat it at any length up to ``max_new_tokens`` (exact: with
  enough beams the search returns the best sequence).

Beams still live after ``max_new_tokens`` tokens compete unfinished (no EOS), with ``L`` their length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

import torch

from ..utils import eval_mode
from .data import pad_sequences

EarlyStopping = bool | Literal["never"]


@dataclass
class DecodeConfig:
    """How summaries are generated, by our searches (:func:`generate`) and by Hugging Face's
    ``model.generate`` (:func:`dgmbook.summarization.hf.generate_kwargs`)."""

    num_beams: int = 1
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    no_immediate_repeat: bool = True  # no token right after itself ("new new"): ban_immediate_repeat
    early_stopping: EarlyStopping = False


class EncoderDecoder(Protocol):
    """What the searches use of a model: :class:`dgmbook.summarization.model.Seq2SeqTransformer`
    (a ``torch.nn.Module``). This module does not import that one, so that the run cache, which
    keys a run by the package modules it reaches through imports, does not tie the runs that only
    need :class:`DecodeConfig` (BERT2BERT's, the LLM's) to the hand-written Transformer."""

    cfg: Any  # with pad_id, bos_id, eos_id

    def __call__(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor: ...
    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor
               ) -> torch.Tensor: ...
    def lm_head(self, h: torch.Tensor) -> torch.Tensor: ...
    def init_cache(self, memory: torch.Tensor, src_keep: torch.Tensor, capacity: int) -> Any: ...
    def decode_step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor: ...


@dataclass
class Generation:
    """Decoded sequences: ``tokens[i]`` is example ``i``'s generated ids (no BOS; ending with EOS
    unless it ran into ``max_new_tokens``), ``scores[i]`` its score (greedy: the summed
    log-probability; beam: that sum divided by ``L ** length_penalty``)."""

    tokens: list[list[int]]
    scores: torch.Tensor  # float [B]


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in at least float32 (float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


class _NextToken:
    """Next-token log-probabilities of a batch of prefixes [N, t] (BOS first), with the KV cache
    (one decoder step per call) or without it (the decoder re-run on the whole prefix, the
    encoder output reused)."""

    def __init__(
        self,
        model: EncoderDecoder,
        memory: torch.Tensor,
        src_keep: torch.Tensor,
        capacity: int,
        use_cache: bool,
    ):
        self.model, self.memory, self.src_keep = model, memory, src_keep
        self.cache = model.init_cache(memory, src_keep, capacity) if use_cache else None

    def __call__(self, seqs: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            assert self.cache.length == seqs.shape[1] - 1, "the cache holds every position but the last"
            logits = self.model.decode_step(seqs[:, -1:], self.cache)[:, -1]  # [N, V]
        else:
            hidden = self.model.decode(seqs, self.memory, self.src_keep)  # [N, t, D]
            logits = self.model.lm_head(hidden[:, -1])  # [N, V]
        return _log_softmax(logits)

    def reorder(self, rows: torch.Tensor) -> None:
        """Prefix ``i`` continues old prefix ``rows[i]`` (a beam of the same example)."""
        if self.cache is not None:
            self.cache.reorder(rows)


def banned_ngram_mask(generated: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """bool [N, V]: True for the tokens that would complete an n-gram already present in
    ``generated`` [N, t] (the tokens generated so far, one row per sequence)."""
    if n < 1:
        raise ValueError(f"the n-gram size must be >= 1, got {n}")
    N, t = generated.shape
    banned = torch.zeros(N, vocab_size, dtype=torch.long, device=generated.device)
    if t < n:  # no complete n-gram yet
        return banned.bool()
    grams = generated.unfold(1, n, 1)  # [N, t - n + 1, n]: every n-gram so far
    prefix = generated[:, t - n + 1 :]  # [N, n - 1]: what the next token would complete
    match = (grams[:, :, :-1] == prefix[:, None, :]).all(-1)  # [N, t - n + 1]
    banned.scatter_add_(1, grams[:, :, -1], match.long())  # count matches per completing token
    return banned > 0


def ban_repeated_ngrams(scores: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
    """``scores`` [N, V] of the next token with -inf for every token that would repeat an n-gram
    of ``generated`` [N, t] (the tokens generated so far)."""
    return scores.masked_fill(banned_ngram_mask(generated, n, scores.shape[1]), -math.inf)


IMMEDIATE_REPEAT_MAX = 4  # tokens: the longest n-gram that may not follow itself


def ban_immediate_repeat(scores: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """``scores`` [N, V] of the next token with -inf for every token that would end a row of
    ``generated`` [N, t] with two copies of one n-gram, 1 <= n <= IMMEDIATE_REPEAT_MAX: for
    n = 1 the last token; for larger n, the n-th token of the n-gram that ends n - 1 tokens
    back, when the n - 1 tokens since it repeat its first n - 1."""
    t = generated.shape[1]
    for n in range(1, min(IMMEDIATE_REPEAT_MAX, (t + 1) // 2) + 1):
        first = generated[:, t - 2 * n + 1 : t - n + 1]  # [N, n]: the copy already written
        since = generated[:, t - n + 1 :]  # [N, n - 1]: what followed it
        rows = (first[:, : n - 1] == since).all(dim=1).nonzero().squeeze(1)  # [M]
        if n == 1:
            scores = scores.scatter(1, first, -math.inf)  # [N, V]: the last token banned
        elif len(rows):
            inf = torch.tensor(-math.inf, dtype=scores.dtype, device=scores.device)
            scores = scores.index_put((rows, first[rows, -1]), inf)
    return scores


@dataclass(frozen=True)
class _Rules:
    """The edits made to log-probabilities before choosing (see the module docstring)."""

    pad_id: int
    bos_id: int
    eos_id: int
    min_new_tokens: int
    no_repeat_ngram_size: int
    no_immediate_repeat: bool = False

    def apply(self, logp: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """``logp`` [N, V] for the next token after ``generated`` [N, t] (no BOS)."""
        logp[:, self.pad_id] = -math.inf
        logp[:, self.bos_id] = -math.inf
        if generated.shape[1] < self.min_new_tokens:
            logp[:, self.eos_id] = -math.inf
        if self.no_repeat_ngram_size > 0:
            logp = ban_repeated_ngrams(logp, generated, self.no_repeat_ngram_size)
        if self.no_immediate_repeat:
            logp = ban_immediate_repeat(logp, generated)
        return logp


def _check_lengths(max_new_tokens: int, min_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")


def _strip(row: Sequence[int], eos: int) -> list[int]:
    """The tokens up to and including the first EOS (drops the padding after it)."""
    out = []
    for tok in row:
        out.append(tok)
        if tok == eos:
            break
    return out


def greedy_search(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    no_repeat_ngram_size: int = 0,
    no_immediate_repeat: bool = False,
    use_cache: bool = True,
) -> Generation:
    """The most probable next token at every step, for a batch ``src`` int64 [B, S]."""
    _check_lengths(max_new_tokens, min_new_tokens)
    cfg = model.cfg
    rules = _Rules(cfg.pad_id, cfg.bos_id, cfg.eos_id, min_new_tokens, no_repeat_ngram_size,
                   no_immediate_repeat)
    with eval_mode(model, inference=True):
        memory, src_keep = model.encode(src)
        next_logp = _NextToken(model, memory, src_keep, max_new_tokens, use_cache)
        B = src.shape[0]
        seqs = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=src.device)  # [B, 1 + t]
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        scores = torch.zeros(B, dtype=torch.float64, device=src.device)
        for _ in range(max_new_tokens):
            logp = rules.apply(next_logp(seqs), seqs[:, 1:])  # [B, V]
            tok = logp.argmax(-1)  # [B]
            scores += torch.where(finished, 0.0, logp.gather(1, tok[:, None])[:, 0].double())
            tok = tok.masked_fill(finished, cfg.pad_id)
            seqs = torch.cat([seqs, tok[:, None]], dim=1)
            finished |= tok == cfg.eos_id
            if finished.all():
                break
    return Generation([_strip(row, cfg.eos_id) for row in seqs[:, 1:].tolist()], scores)


class _Finished:
    """The best ``K`` finished hypotheses of one example, by length-normalised score."""

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.hyps: list[tuple[float, list[int]]] = []  # (score, tokens), best first

    def normalised(self, sum_logprob: float, length: int) -> float:
        return sum_logprob / length**self.length_penalty

    def add(self, tokens: list[int], sum_logprob: float) -> None:
        score = self.normalised(sum_logprob, len(tokens))
        if len(self.hyps) < self.num_beams or score > self.hyps[-1][0]:
            self.hyps.append((score, tokens))
            self.hyps.sort(key=lambda h: -h[0])
            del self.hyps[self.num_beams :]

    def is_done(self, best_live: float, cur_len: int, max_len: int, early_stopping: EarlyStopping) -> bool:
        """Whether no live beam (best summed log-probability ``best_live`` after ``cur_len``
        tokens) can still enter the top ``K``."""
        if len(self.hyps) < self.num_beams:
            return False
        if early_stopping is True:
            return True
        if early_stopping == "never" and self.length_penalty > 0:
            best_possible = self.normalised(best_live, max_len)  # log-probs only go down
        else:
            best_possible = self.normalised(best_live, cur_len)
        return self.hyps[-1][0] >= best_possible


def beam_search(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    no_repeat_ngram_size: int = 0,
    no_immediate_repeat: bool = False,
    use_cache: bool = True,
) -> Generation:
    """Beam search for a batch ``src`` int64 [B, S] (see the module docstring for the rules);
    returns each example's best hypothesis."""
    _check_lengths(max_new_tokens, min_new_tokens)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    cfg, K = model.cfg, num_beams
    rules = _Rules(cfg.pad_id, cfg.bos_id, cfg.eos_id, min_new_tokens, no_repeat_ngram_size,
                   no_immediate_repeat)
    B, device = src.shape[0], src.device
    with eval_mode(model, inference=True):
        memory, src_keep = model.encode(src)  # [B, S, D], [B, 1, 1, S]
        memory, src_keep = memory.repeat_interleave(K, 0), src_keep.repeat_interleave(K, 0)  # [B*K, ...]
        next_logp = _NextToken(model, memory, src_keep, max_new_tokens, use_cache)
        seqs = torch.full((B * K, 1), cfg.bos_id, dtype=torch.long, device=device)  # [B*K, 1 + t]
        # Summed log-probabilities of the live beams [B, K]; at first only beam 0 exists.
        beam_scores = torch.full((B, K), -math.inf, dtype=torch.float64, device=device)
        beam_scores[:, 0] = 0.0
        finished = [_Finished(K, length_penalty) for _ in range(B)]
        done = [False] * B
        first_row = torch.arange(B, device=device)[:, None] * K  # [B, 1]: row of beam 0
        for step in range(max_new_tokens):
            logp = rules.apply(next_logp(seqs), seqs[:, 1:]).double()  # [B*K, V]
            V = logp.shape[1]
            cand = (beam_scores.view(B * K, 1) + logp).view(B, K * V)  # [B, K*V]
            top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # [B, 2K], best first
            top_beam, top_tok = top_idx // V, top_idx % V  # [B, 2K] each
            is_eos = top_tok == cfg.eos_id
            # EOS among the K best candidates: a finished hypothesis.
            ends = is_eos[:, :K] & top_scores[:, :K].isfinite()  # [B, K]
            for b, j in ends.nonzero().tolist():
                if not done[b]:
                    row = b * K + int(top_beam[b, j])
                    finished[b].add(seqs[row, 1:].tolist() + [cfg.eos_id], float(top_scores[b, j]))
            # The K best candidates that do not end: the next beams (each beam offers at most one
            # EOS, so at least K of the 2K candidates remain).
            next_scores, pos = top_scores.masked_fill(is_eos, -math.inf).topk(K, dim=1)  # [B, K]
            rows = (first_row + top_beam.gather(1, pos)).view(-1)  # [B*K]: the beams they extend
            seqs = torch.cat([seqs[rows], top_tok.gather(1, pos).view(-1, 1)], dim=1)
            next_logp.reorder(rows)
            beam_scores = next_scores
            best_live = beam_scores[:, 0].tolist()
            for b in range(B):
                if not done[b]:
                    done[b] = finished[b].is_done(best_live[b], step + 1, max_new_tokens, early_stopping)
            if all(done):
                break
        # Beams still live at the end compete as they are.
        live = beam_scores.tolist()
        for b in range(B):
            if not done[b]:
                for k in range(K):
                    if math.isfinite(live[b][k]):
                        finished[b].add(seqs[b * K + k, 1:].tolist(), live[b][k])
    best = [f.hyps[0] for f in finished]
    return Generation([tokens for _, tokens in best], torch.tensor([s for s, _ in best], dtype=torch.float64))


def generate(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    no_repeat_ngram_size: int = 0,
    no_immediate_repeat: bool = False,
    use_cache: bool = True,
) -> Generation:
    """Greedy search when ``num_beams == 1`` (as Hugging Face's ``generate``), else beam search."""
    if num_beams == 1:
        return greedy_search(
            model, src, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram_size, no_immediate_repeat=no_immediate_repeat,
            use_cache=use_cache,
        )
    return beam_search(
        model, src, num_beams=num_beams, max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens, length_penalty=length_penalty,
        early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size,
        no_immediate_repeat=no_immediate_repeat, use_cache=use_cache,
    )


def sequence_logprobs(
    model: EncoderDecoder, src: torch.Tensor, sequences: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Teacher-forced ``sum_t log p(y_t | y_<t, x)`` of one generated sequence per example
    (``sequences[i]`` without BOS, as :class:`Generation` holds them): float [B]."""
    cfg = model.cfg
    tgt_out = pad_sequences([list(s) for s in sequences], cfg.pad_id).to(src.device)  # [B, T]
    T = tgt_out.shape[1]
    tgt_in = torch.cat([torch.full_like(tgt_out[:, :1], cfg.bos_id), tgt_out[:, :-1]], dim=1)  # [B, T]
    with eval_mode(model, inference=True):
        logp = _log_softmax(model(src, tgt_in))  # [B, T, V]
    token_logp = logp.gather(2, tgt_out[:, :, None])[:, :, 0]  # [B, T]
    lengths = torch.tensor([len(s) for s in sequences], device=src.device)
    real = torch.arange(T, device=src.device)[None, :] < lengths[:, None]  # [B, T]
    return torch.where(real, token_logp, 0.0).sum(1)
