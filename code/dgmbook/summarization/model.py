"""A Transformer encoder-decoder written out by hand (nanoGPT style), with a KV cache for generation
(chapter "Summarization I").

Layout (pre-LN, as GPT-2 and mBART: a LayerNorm before each sub-layer, one after each stack)::

    encoder   x = E[src] + P_enc[0..S)                        E: token embedding, shared
              x = x + SelfAttn(LN(x), key padding masked)      (n_enc_layers times)
              x = x + FF(LN(x))
              memory = LN(x)
    decoder   y = E[tgt] + P_dec[0..T)
              y = y + CausalSelfAttn(LN(y))                   (n_dec_layers times)
              y = y + CrossAttn(LN(y), memory, key padding masked)
              y = y + FF(LN(y))
              logits = LN(y) @ E^T                             (output projection tied to E)

``FF(x) = W2 gelu(W1 x)``; positions ``P`` are learned tables or the fixed sinusoids of Vaswani et
al. (``Seq2SeqConfig.positions``). Attention is :func:`torch.nn.functional.scaled_dot_product_attention`
with boolean masks, ``True`` = may attend.

KV cache (:class:`KVCache`): generating token ``t`` only needs the new token's query; the keys
and values of positions ``< t`` do not change. Each decoder layer therefore keeps

* its self-attention K/V of all past positions, in a buffer ``[B, H, capacity, Dh]`` that each
  step appends to (:meth:`LayerKV.extend`), and
* its cross-attention K/V of the encoder output, ``[B, H, S, Dh]``, computed once per source.

so a step costs O(t) attention work instead of re-running the decoder on the whole prefix.

A generation step feeds one position per sequence: a few dozen products of one row (or a few) by
a weight matrix. At batch 1 such a step is limited by reading the 19 MB of weights it uses and
by the fixed cost of each operation, not by arithmetic, so :meth:`Seq2SeqTransformer.decode_step`
runs it without autograd in fewer, cheaper operations (:meth:`Seq2SeqTransformer._decode_one`):
the weights laid out for one-row products (:class:`StepWeights`: the self-attention's Q, K and V
in one matrix, matrices stored ``[in, out]``), made once and kept until a parameter changes; the
new key and value written into the cache in one copy; attention as two batched products around
a softmax. The output layer (:meth:`Seq2SeqTransformer.lm_head`) reads ``E^T`` laid out the same
way in generation with or without the cache, so the two differ only by the cache. Training, and
anything else with autograd, runs the layers as written above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

POSITIONS = ("learned", "sinusoidal")
INITS = ("gpt2", "xavier")


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    n_enc_layers: int = 3
    n_dec_layers: int = 3
    d_ff: int = 1024
    max_len: int = 512  # the longest source, and the longest decoder input, the model accepts
    dropout: float = 0.1  # on the embeddings and on each sub-layer's output
    attn_dropout: float = 0.0  # on attention weights; > 0 forces PyTorch's slow unfused attention
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    positions: str = "learned"  # "learned" or "sinusoidal"
    init: str = "gpt2"  # "gpt2" or "xavier" (see Seq2SeqTransformer._init_weights)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """``P[p, 2i] = sin(p / 10000^(2i/d))``, ``P[p, 2i+1] = cos(...)``: float32 ``[max_len, d]``."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # [L, 1]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)  # [L, ceil(d/2)]
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]  # [L, floor(d/2)]
    return table.float()


def causal_mask(n_new: int, n_past: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """Self-attention mask for ``n_new`` queries that follow ``n_past`` cached positions, as
    ``(attn_mask, is_causal)`` for scaled_dot_product_attention. Query ``i`` (absolute position
    ``n_past + i``) may attend keys ``0 .. n_past + i``."""
    if n_new == 1:  # the one new token sees everything that exists
        return None, False
    if n_past == 0:
        return None, True
    keep = torch.ones(n_new, n_past + n_new, dtype=torch.bool, device=device).tril(n_past)
    return keep, False  # [T_new, T_past + T_new]


class MultiHeadAttention(nn.Module):
    """Multi-head attention. Queries come from one projection, keys and values from one fused
    projection ``kv_proj`` (rows ``[:D]`` keys, ``[D:]`` values) of the same sequence or of another
    one (the encoder output), so that cross-attention K/V can be computed once and cached."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.d_head, self.dropout = n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # [B, T, D] -> [B, H, T, Dh]

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``source`` [B, S, D], each [B, H, S, Dh]."""
        k, v = self.kv_proj(source).chunk(2, dim=-1)  # [B, S, 2D] -> 2 x [B, S, D]
        return self.split_heads(k), self.split_heads(v)

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Queries from ``x`` [B, T, D] attend to ``k``, ``v`` [B, H, S, Dh]; ``mask`` is boolean,
        broadcastable to [B, H, T, S], True where attention is allowed. Returns [B, T, D]."""
        B, T, D = x.shape
        q = self.split_heads(self.q_proj(x))  # [B, H, T, Dh]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, T, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))  # [B, H, T, Dh] -> [B, T, D]

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Self-attention (``source=None``) or attention from ``x`` to ``source``."""
        k, v = self.project_kv(x if source is None else source)
        return self.attend(x, k, v, mask, is_causal)


class FeedForward(nn.Module):
    """``W2 gelu(W1 x)``, without dropout inside (as nanoGPT: dropout on the hidden layer, the
    largest activation, would cost more random numbers than the rest of the model together)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN: ``x + SelfAttn(LN(x))``, then ``x + FF(LN(x))``."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, src_keep: torch.Tensor | None) -> torch.Tensor:
        """``x`` [B, S, D]; ``src_keep`` bool [B, 1, 1, S] (False at padding) or None."""
        x = x + self.dropout(self.self_attn(self.norm1(x), mask=src_keep))
        return x + self.dropout(self.ff(self.norm2(x)))


@dataclass
class LayerKV:
    """One decoder layer's cache. ``self_k``/``self_v`` [B, H, capacity, Dh] are allocated on the
    first :meth:`extend` (with the dtype the projections produce, bf16 under autocast), as the
    two halves of one buffer ``self_kv`` so that a step writes both in one copy."""

    cross_k: torch.Tensor  # [B, H, S, Dh]
    cross_v: torch.Tensor  # [B, H, S, Dh]
    capacity: int
    self_k: torch.Tensor | None = None
    self_v: torch.Tensor | None = None
    self_kv: torch.Tensor | None = None  # [2, B, H, capacity, Dh]: self_k and self_v are its halves
    spare: torch.Tensor | None = None  # another such buffer, for reorder

    def check_room(self, past: int, new: int) -> None:
        if past + new > self.capacity:
            raise ValueError(
                f"KV cache overflow: {past} cached + {new} new positions > capacity {self.capacity}; "
                "create the cache with a larger capacity (the number of decoder inputs to feed)"
            )

    def allocate(self, B: int, H: int, Dh: int, dtype: torch.dtype, device: torch.device) -> None:
        self.self_kv = torch.empty(2, B, H, self.capacity, Dh, dtype=dtype, device=device)
        self.self_k, self.self_v = self.self_kv[0], self.self_kv[1]

    def reorder(self, index: torch.Tensor, n: int) -> None:
        """Rows ``index`` of the first ``n`` positions, gathered into a second buffer that then
        takes the first one's place (no copy back; ``index_select`` is several times faster than
        indexing with a tensor)."""
        if self.self_kv.requires_grad:  # autograd through the cache: no out=
            self.self_kv[:, :, :, :n] = self.self_kv[:, :, :, :n].index_select(1, index)
            return
        if self.spare is None:
            self.spare = torch.empty_like(self.self_kv)
        torch.index_select(self.self_kv[:, :, :, :n], 1, index, out=self.spare[:, :, :, :n])
        self.self_kv, self.spare = self.spare, self.self_kv
        self.self_k, self.self_v = self.self_kv[0], self.self_kv[1]

    def extend(
        self, k: torch.Tensor, v: torch.Tensor, past: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions' ``k``, ``v`` [B, H, T, Dh] after the ``past`` cached ones and
        return the keys and values of all positions, [B, H, past + T, Dh] (views of the buffer)."""
        B, H, T, Dh = k.shape
        self.check_room(past, T)
        if self.self_k is None:
            self.allocate(B, H, Dh, k.dtype, k.device)
        self.self_k[:, :, past : past + T] = k
        self.self_v[:, :, past : past + T] = v
        return self.self_k[:, :, : past + T], self.self_v[:, :, : past + T]


def _matmul_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype matrix products run in: autocast's when it is on, else the parameters'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


def _attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, sdpa: bool
) -> torch.Tensor:
    """Attention of one query per row and head, ``q`` [B, H, Dh] already scaled by 1/sqrt(Dh),
    to ``k``, ``v`` [B, H, S, Dh] (the last two dims contiguous), ``bias`` [B, H, 1, S] added to
    the scores (or None): the output [B, H*Dh], heads side by side."""
    B, H, S, Dh = k.shape
    if sdpa:
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=bias, scale=1.0)
        return out.view(B, H * Dh)
    q, k, v = q.reshape(B * H, 1, Dh), k.flatten(0, 1), v.flatten(0, 1)  # views where they can be
    if bias is None:
        scores = torch.bmm(q, k.transpose(1, 2))  # [B*H, 1, S]
    else:
        scores = torch.baddbmm(bias.view(B * H, 1, S), q, k.transpose(1, 2))
    return torch.bmm(scores.softmax(-1), v).view(B, H * Dh)


@dataclass
class StepWeights:
    """One decoder layer's weights laid out for steps of one position (:meth:`Seq2SeqTransformer.decode_step`):

    * the self-attention's ``W_q``, ``W_k``, ``W_v`` stacked into one ``[D, 3D]`` matrix, so that
      one product gives the new position's query, key and value;
    * matrices stored ``[in, out]``, the transpose of ``nn.Linear``'s ``[out, in]``, except the
      feed-forward's second one. A product with one row (or a few) is limited by reading the
      matrix from memory, and this machine's BLAS (MKL on an AMD EPYC) reads the ``[in, out]``
      layout 2-3 times faster when ``out >= in``: 23 against 8 GB/s for the ``[8000, 256]``
      output matrix, which :meth:`Seq2SeqTransformer.lm_head` keeps transposed too;
    * in the dtype of the products (bfloat16 under bf16 autocast: converted once, not per step).

    The model makes them at the first step after a parameter changed and keeps them
    (:meth:`Seq2SeqTransformer._packed`): transposing the weights costs several steps."""

    norm1_w: torch.Tensor
    norm1_b: torch.Tensor
    qkv_w: torch.Tensor  # [D, 3D]
    qkv_b: torch.Tensor  # [3D]
    self_out_w: torch.Tensor  # [D, D]
    self_out_b: torch.Tensor
    norm2_w: torch.Tensor
    norm2_b: torch.Tensor
    cross_q_w: torch.Tensor  # [D, D]
    cross_q_b: torch.Tensor
    cross_out_w: torch.Tensor  # [D, D]
    cross_out_b: torch.Tensor
    norm3_w: torch.Tensor
    norm3_b: torch.Tensor
    ff1_w: torch.Tensor  # [D, F]
    ff1_b: torch.Tensor
    ff2_w: torch.Tensor  # [D, F]: nn.Linear's own layout
    ff2_b: torch.Tensor

    def detach(self) -> StepWeights:
        return StepWeights(*(getattr(self, f.name).detach() for f in fields(self)))


@dataclass
class KVCache:
    """Everything incremental decoding keeps between steps: per decoder layer a :class:`LayerKV`,
    the source padding mask, and how many decoder positions have been fed; for steps of one
    position also the decoder's :class:`StepWeights` and the source mask as an additive bias
    (0 or -inf), both set at the first such step."""

    layers: list[LayerKV]
    src_keep: torch.Tensor  # bool [B, 1, 1, S]
    length: int = 0
    weights: list[StepWeights] | None = None
    src_bias: torch.Tensor | None = None  # float [B, H, 1, S]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (int64 [B]) of the self-attention cache: row ``i`` becomes old row
        ``index[i]`` (beam search). Rows must be moved only among rows of the same source (the
        beams of one example), because the cross-attention K/V and the source mask, identical
        across those rows, are left in place."""
        n = self.length
        for layer in self.layers:
            if layer.self_kv is not None:
                layer.reorder(index, n)


class DecoderLayer(nn.Module):
    """Pre-LN: ``y + CausalSelfAttn(LN(y))``, ``y + CrossAttn(LN(y), memory)``, ``y + FF(LN(y))``."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        y: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        src_keep: torch.Tensor | None,
        cache: LayerKV | None = None,
        past: int = 0,
    ) -> torch.Tensor:
        """``y`` [B, T, D]: the decoder inputs at positions ``past .. past+T-1``; ``cross_kv``: the
        cross-attention K/V of the memory, each [B, H, S, Dh]; ``src_keep`` bool [B, 1, 1, S].
        Without ``cache`` the T positions attend among themselves (teacher forcing, ``past=0``);
        with it they also attend to the ``past`` cached positions, and are appended to it."""
        h = self.norm1(y)
        k, v = self.self_attn.project_kv(h)  # [B, H, T, Dh]
        if cache is not None:
            k, v = cache.extend(k, v, past)  # [B, H, past + T, Dh]
        elif past:
            raise ValueError("past positions need a cache")
        mask, is_causal = causal_mask(y.shape[1], past, y.device)
        y = y + self.dropout(self.self_attn.attend(h, k, v, mask, is_causal))
        y = y + self.dropout(self.cross_attn.attend(self.norm2(y), *cross_kv, mask=src_keep))
        return y + self.dropout(self.ff(self.norm3(y)))


class Seq2SeqTransformer(nn.Module):
    """The encoder-decoder. ``forward(src, tgt_in)`` gives teacher-forced logits; generation uses
    :meth:`encode`, :meth:`init_cache` and :meth:`decode_step` (see :mod:`dgmbook.summarization.decoding`)."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        self._packed_weights: dict[str, tuple] = {}  # weights laid out for decoding: see _packed
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by both stacks and the output
        if cfg.positions == "learned":
            self.enc_pos = nn.Embedding(cfg.max_len, cfg.d_model)
            self.dec_pos = nn.Embedding(cfg.max_len, cfg.d_model)
        else:
            table = sinusoidal_positions(cfg.max_len, cfg.d_model)
            self.register_buffer("sinusoids", table, persistent=False)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_dec_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self._init_weights()

    def _init_weights(self) -> None:
        """Zero biases, unit LayerNorm gains, and for the weight matrices either

        * ``"gpt2"``: GPT-2's N(0, 0.02), the projections that write into the residual stream
          scaled by 1/sqrt(2 * number of layers); or
        * ``"xavier"``: ``torch.nn.Transformer``'s Glorot-uniform linear layers (std
          sqrt(2 / (fan_in + fan_out)), 0.0625 for a 256 x 256 matrix), embeddings N(0, 1/d_model)
          so that the tied output layer starts with logits of unit scale.

        An attention score is bilinear in W_q and W_k, so its gradient with respect to one is
        proportional to the other: with 0.02 weights the cross-attention starts flat and learns
        slowly, and the decoder first learns a language model that ignores the document
        (``source_use`` measures this); the larger Glorot weights leave that plateau sooner."""
        residual_std = 0.02 / math.sqrt(2 * (self.cfg.n_enc_layers + self.cfg.n_dec_layers))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif self.cfg.init == "xavier":
                if name.endswith(("tok_emb.weight", "pos.weight")):
                    nn.init.normal_(p, std=self.cfg.d_model ** -0.5)
                else:
                    nn.init.xavier_uniform_(p)
            elif name.endswith(("out_proj.weight", "linear2.weight")):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=0.02)

    def _embed(self, ids: torch.Tensor, offset: int, table: str) -> torch.Tensor:
        """Token + position embeddings of ``ids`` [B, T] at positions ``offset .. offset+T-1``."""
        T = ids.shape[1]
        if offset + T > self.cfg.max_len:
            raise ValueError(
                f"position {offset + T - 1} is beyond max_len={self.cfg.max_len}; truncate the "
                "input or build the model with a larger max_len"
            )
        if self.cfg.positions == "learned":  # rows offset .. offset+T-1 of the position table
            pe = getattr(self, table).weight[offset : offset + T]  # [T, D]
        else:
            pe = self.sinusoids[offset : offset + T]  # [T, D]
        return self.emb_dropout(self.tok_emb(ids) + pe)  # [B, T, D]

    def embed_source(self, src: torch.Tensor) -> torch.Tensor:
        """The encoder's input: token + position embeddings of ``src`` [B, S] -> [B, S, D]."""
        return self._embed(src, 0, "enc_pos")

    def embed_target(self, tgt_in: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The decoder's input: token + position embeddings of ``tgt_in`` [B, T] at positions
        ``offset .. offset+T-1`` -> [B, T, D] (what the first decoder layer receives)."""
        return self._embed(tgt_in, offset, "dec_pos")

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """bool [B, 1, 1, S]: True at real source tokens, False at padding."""
        return (src != self.cfg.pad_id)[:, None, None, :]

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src`` int64 [B, S] (right-padded) -> (memory [B, S, D], src_keep bool [B, 1, 1, S])."""
        src_keep = self.source_mask(src)
        x = self.embed_source(src)
        for layer in self.encoder:
            x = layer(x, src_keep)
        return self.enc_norm(x), src_keep

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        """Teacher forcing, no cache: decoder inputs [B, T] -> final hidden states [B, T, D]."""
        y = self.embed_target(tgt_in)
        for layer in self.decoder:
            y = layer(y, layer.cross_attn.project_kv(memory), src_keep)
        return self.dec_norm(y)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., D] -> logits [..., V] with the tied embedding matrix. Without
        autograd (generation, evaluation) the product reads a transposed copy ``E^T`` [D, V]
        (see :class:`StepWeights`), whether the decoder ran with the KV cache or without it."""
        E = self.tok_emb.weight
        if torch.is_grad_enabled():
            return F.linear(h, E)
        dtype = _matmul_dtype(h.device, E.dtype)
        return h @ self._packed("E^T", (E,), lambda: E.detach().t().to(dtype).contiguous(), dtype)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] of ``tgt_in`` [B, T] given ``src`` [B, S]."""
        memory, src_keep = self.encode(src)
        return self.lm_head(self.decode(tgt_in, memory, src_keep))

    def loss(
        self,
        src: torch.Tensor,
        tgt_in: torch.Tensor,
        tgt_out: torch.Tensor,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Mean cross-entropy over the non-padding labels of ``tgt_out`` [B, T]."""
        logits = self(src, tgt_in)  # [B, T, V]
        return F.cross_entropy(
            logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32)),  # [B*T, V]
            tgt_out.flatten(),  # [B*T]
            ignore_index=self.cfg.pad_id, label_smoothing=label_smoothing,
        )

    # --- incremental decoding -----------------------------------------------------------------

    def init_cache(self, memory: torch.Tensor, src_keep: torch.Tensor, capacity: int) -> KVCache:
        """A cache for up to ``capacity`` decoder positions: computes every layer's cross-attention
        K/V of ``memory`` [B, S, D] once."""
        layers = [LayerKV(*(t.contiguous() for t in layer.cross_attn.project_kv(memory)), capacity=capacity)
                  for layer in self.decoder]
        return KVCache(layers, src_keep)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed ``tokens`` [B, T] (usually T = 1) at the next positions; return their logits
        [B, T, V] and append their keys and values to ``cache``. One position without autograd
        (generation) takes :meth:`_decode_one`, the same computation in fewer operations."""
        if tokens.shape[1] == 1 and not self.training and not torch.is_grad_enabled():
            return self._decode_one(tokens, cache)
        past = cache.length
        y = self.embed_target(tokens, past)  # [B, T, D]
        for layer, kv in zip(self.decoder, cache.layers):
            y = layer(y, (kv.cross_k, kv.cross_v), cache.src_keep, kv, past)
        cache.length = past + tokens.shape[1]
        return self.lm_head(self.dec_norm(y))

    def _decode_one(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """:meth:`decode_step` for one position, in eval mode without autograd: the layers of
        :class:`DecoderLayer` written out with the weights of :class:`StepWeights`, the new key
        and value written into the cache in one copy, and attention as two batched products
        around a softmax (for one query, cheaper than scaled_dot_product_attention; not in
        bfloat16 or float16, autocast included, where the scores would be rounded to 16 bits).
        ``tokens`` [B, 1] -> logits [B, 1, V]."""
        B, n = tokens.shape[0], cache.length
        D, H = self.cfg.d_model, self.cfg.n_heads
        Dh = D // H
        if n >= self.cfg.max_len:
            self.embed_target(tokens, n)  # raises the error
        cache.layers[0].check_room(n, 1)
        dtype = _matmul_dtype(tokens.device, self.tok_emb.weight.dtype)
        if cache.weights is None or cache.weights[0].qkv_w.dtype != dtype:
            cache.weights = self._packed("decoder", self.decoder.parameters(),
                                         lambda: self._step_weights(dtype), dtype)
            S = cache.src_keep.shape[-1]
            bias = torch.zeros_like(cache.src_keep, dtype=self.tok_emb.weight.dtype)
            cache.src_bias = bias.masked_fill(~cache.src_keep, -math.inf).expand(B, H, 1, S).contiguous()
        sdpa = dtype not in (torch.float32, torch.float64)  # bf16 / fp16 scores: see _attend_one
        pe = self.dec_pos.weight[n] if self.cfg.positions == "learned" else self.sinusoids[n]
        y = F.embedding(tokens.view(B), self.tok_emb.weight) + pe  # [B, D]
        eps = self.dec_norm.eps
        for w, kv in zip(cache.weights, cache.layers):
            h = F.layer_norm(y, (D,), w.norm1_w, w.norm1_b, eps)
            qkv = torch.addmm(w.qkv_b, h, w.qkv_w).view(B, 3, H, Dh)  # q / sqrt(Dh), k, v
            if kv.self_kv is None:
                kv.allocate(B, H, Dh, qkv.dtype, qkv.device)
            kv.self_kv.select(3, n).copy_(qkv[:, 1:].transpose(0, 1))  # into [2, B, H, n, Dh]
            k, v = kv.self_k.narrow(2, 0, n + 1), kv.self_v.narrow(2, 0, n + 1)  # [B, H, n + 1, Dh]
            a = _attend_one(qkv[:, 0], k, v, None, sdpa)  # [B, D]
            y = y + torch.addmm(w.self_out_b, a, w.self_out_w)
            h = F.layer_norm(y, (D,), w.norm2_w, w.norm2_b, eps)
            q = torch.addmm(w.cross_q_b, h, w.cross_q_w).view(B, H, Dh)  # q / sqrt(Dh)
            a = _attend_one(q, kv.cross_k, kv.cross_v, cache.src_bias, sdpa)
            y = y + torch.addmm(w.cross_out_b, a, w.cross_out_w)
            h = F.layer_norm(y, (D,), w.norm3_w, w.norm3_b, eps)
            y = y + F.linear(F.gelu(torch.addmm(w.ff1_b, h, w.ff1_w)), w.ff2_w, w.ff2_b)
        cache.length = n + 1
        return self.lm_head(F.layer_norm(y, (D,), self.dec_norm.weight, self.dec_norm.bias, eps))[:, None]

    # --- weights laid out for decoding ----------------------------------------------------------

    @torch.no_grad()
    def _step_weights(self, dtype: torch.dtype) -> list[StepWeights]:
        """The decoder layers' weights as :class:`StepWeights`, in ``dtype``."""

        def t(lin: nn.Linear) -> torch.Tensor:  # [out, in] -> [in, out]
            return lin.weight.t().to(dtype).contiguous()

        scale = (self.cfg.d_model // self.cfg.n_heads) ** -0.5  # folded into the query weights

        out = []
        for layer in self.decoder:
            sa, ca, ff = layer.self_attn, layer.cross_attn, layer.ff
            out.append(StepWeights(
                layer.norm1.weight, layer.norm1.bias,
                torch.cat([sa.q_proj.weight * scale, sa.kv_proj.weight]).t().to(dtype).contiguous(),
                torch.cat([sa.q_proj.bias * scale, sa.kv_proj.bias]).to(dtype),
                t(sa.out_proj), sa.out_proj.bias.to(dtype),
                layer.norm2.weight, layer.norm2.bias,
                (ca.q_proj.weight * scale).t().to(dtype).contiguous(), (ca.q_proj.bias * scale).to(dtype),
                t(ca.out_proj), ca.out_proj.bias.to(dtype),
                layer.norm3.weight, layer.norm3.bias,
                t(ff.linear1), ff.linear1.bias.to(dtype), ff.linear2.weight.to(dtype), ff.linear2.bias.to(dtype),
            ).detach())
        return out

    def _packed(self, name: str, params, build, dtype: torch.dtype):
        """``build()``, made from ``params`` and kept until one of them changes: their addresses
        and version counters are the key (every in-place change bumps the counter: optimizer
        steps, ``load_state_dict``, ``copy_`` under ``no_grad``). Changes through ``.data`` escape
        it, and so do in-place changes of parameters created under ``torch.inference_mode``
        (which have no counter) other than by ``load_state_dict``."""
        key = (dtype, *[(p.data_ptr(), -1 if p.is_inference() else p._version) for p in params])
        hit = self._packed_weights.get(name)
        if hit is None or hit[0] != key:
            self._packed_weights.pop(name, None)  # free the old copy first
            hit = self._packed_weights[name] = key, build()
        return hit[1]

    def train(self, mode: bool = True) -> Seq2SeqTransformer:
        if mode:  # training changes the weights: drop the copies
            self._packed_weights.clear()
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._packed_weights.clear()
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: new parameters
        self._packed_weights.clear()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):  # pickle, deepcopy: without the copies
        state = self.__dict__.copy()
        state["_packed_weights"] = {}
        return state
