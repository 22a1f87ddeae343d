"""Training and evaluating the from-scratch summarizer (chapter "Summarization I").

``train(TrainConfig(...))`` trains a BPE tokenizer on the training split, then a
:class:`~dgmbook.summarization.model.Seq2SeqTransformer` with

* AdamW (weight decay on matrices only), learning rate ``lr * min(1, (step + 1) / warmup_steps)
  * (1 - progress)``: a linear warm-up times a linear decay to zero, where ``progress`` in [0, 1]
  is the fraction of the budget used (steps, epochs or minutes, whichever runs out first);
* label-smoothed cross-entropy, gradient clipping, and bf16 autocast on the CPU (``bf16=True``);
* the validation loss (plain cross-entropy per target token) after every epoch and at the end.

It returns a plain dict that :func:`torch.save` stores (so the chapter runs it through
:func:`dgmbook.runcache.cached`): the configurations, the state dict, the tokenizer as a JSON
string and the curves. :func:`load_trained` rebuilds the model and tokenizer from it,
:func:`summarize` decodes documents (:mod:`.decoding`), and :func:`evaluate` scores them with the
evaluation loop every system shares (:func:`dgmbook.summarization.evaluation.evaluate`).
:func:`full_experiment` is the recorded full run.

A budget in minutes makes a run depend on the machine's speed; the book's run
(:func:`book_config`) counts steps, so that it is reproducible. From the command line::

    python -m dgmbook.summarization.scratch --preset book --minutes 3 --eval 100
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .. import device as devices
from .. import distributed as dist
from ..utils import autocast, count_parameters, eval_mode, seed_everything
from . import data as sd
from . import evaluation
from .evaluation import ROUGE_TYPES
from .decoding import DecodeConfig, generate
from .model import Seq2SeqConfig, Seq2SeqTransformer

DATASETS = ("dialogsum", "xsum-cs182")


@dataclass
class TrainConfig:
    """One training run: the data and its tokenizer, the model (one :class:`Seq2SeqConfig`), the
    optimisation and its budget. The model's ``vocab_size`` is the size of the BPE vocabulary
    trained on the training split; :func:`model_config` takes the vocabulary size and the special
    token ids from the tokenizer, so a hub tokenizer brings its own."""

    # data
    data: str = "dialogsum"  # "dialogsum", or "xsum-cs182" (the course's subset, needs the hub)
    train_examples: int | None = None  # the first N training examples (None: all)
    val_examples: int | None = None  # the first N validation examples (None: all)
    tokenizer: str | None = None  # None: BPE trained on the training split; else a hub name
    max_source_len: int = 256  # tokens kept of each document, EOS included
    max_target_len: int = 64  # tokens kept of each summary, EOS included
    # the model; its max_len (the position table) must cover max_source_len, max_target_len and
    # every token ever generated
    model: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    # optimisation; training stops at the first budget reached (at least one must be set)
    epochs: float | None = None
    max_steps: int | None = None
    minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    beta2: float = 0.98
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    bf16: bool = True  # bf16 autocast: 1.7x the fp32 training tokens/s here (bench_seq2seq.py)
    seed: int = 0
    device: str = "cpu"
    # a ROUGE learning curve, as BERT2BERT's (bert2bert.FinetuneConfig): every ``curve_every``
    # training examples (and before training), greedy summaries of the first ``curve_rouge``
    # validation dialogues scored against their first reference; 0: no curve
    curve_every: int = 0
    curve_rouge: int = 0

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"data must be one of {DATASETS}, got {self.data!r}")
        if self.epochs is None and self.max_steps is None and self.minutes is None:
            raise ValueError("set a training budget: epochs, max_steps or minutes")
        if self.curve_rouge and self.curve_every < 1:
            raise ValueError("curve_rouge needs curve_every: the examples between curve points")
        if self.model.max_len < max(self.max_source_len, self.max_target_len):
            raise ValueError(
                f"model.max_len ({self.model.max_len}) must cover max_source_len "
                f"({self.max_source_len}) and max_target_len ({self.max_target_len})"
            )

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TrainConfig:
        """The configuration that :func:`dataclasses.asdict` gave ``config`` (a run's ``config``,
        a results file's), also from a results file recorded before the model's fields were
        nested (``d_model``, ``init``, ``dropout`` ... at the top level)."""
        config = dict(config)
        model = dict(config.pop("model", {}))
        model_fields = {f.name for f in fields(Seq2SeqConfig)}
        model.update({k: config.pop(k) for k in list(config) if k in model_fields})
        return cls(model=Seq2SeqConfig(**model), **config)


def book_config() -> TrainConfig:
    """The run the book executes: the 7.8M-parameter model (d 256, 3+3 layers, BPE 8k), inputs
    cut to 192 tokens, Glorot initialisation, 600 steps of 16 dialogues (0.8 epochs), no
    dropout (too short a run to overfit); batches of 16 rather than 32, for twice the updates on
    the same examples. A step budget, so the run is reproducible; 4-5 minutes on 2 cores. A ROUGE
    learning curve on 50 validation dialogues every 4,000 examples, as BERT2BERT's book run
    records one (the chapters compare the two at equal time and at equal examples).
    (With GPT-2's N(0, 0.02) initialisation the same budget learns a generic summary that
    ignores the dialogue: see the chapter's "Does it read the dialogue?")"""
    return TrainConfig(model=Seq2SeqConfig(init="xavier", dropout=0.0), max_steps=600,
                       batch_size=16, max_source_len=192, warmup_steps=100,
                       curve_every=4000, curve_rouge=50)


def full_config() -> TrainConfig:
    """The long run (``python -m dgmbook full summarization-scratch``): the book's 7.8M-parameter
    shape (d 256, 3+3 layers), whose speed and quality were calibrated on this machine (10 and
    40 minutes of training), with dropout 0.1, Glorot initialisation (``init="xavier"``: the
    model starts reading the dialogue much sooner than with GPT-2's 0.02), and 5,000 steps of 32
    (12.8 epochs, 70-80 minutes on 2 cores; at most 80 minutes); the learning rate decays
    linearly to zero over that budget."""
    return TrainConfig(model=Seq2SeqConfig(init="xavier", dropout=0.1), warmup_steps=400,
                       max_steps=5000, minutes=80)


def course_config() -> TrainConfig:
    """The course's recipe: XSum's CS 182 subset (24,350 training examples), the t5-small
    tokenizer, a 6+6-layer 512-wide model (8 heads, d_ff 2048), 5 epochs. Needs the Hugging
    Face hub (and, in practice, a GPU: ``device="cuda"``). The truncation lengths are ours."""
    return TrainConfig(
        data="xsum-cs182", tokenizer="t5-small", max_source_len=512, max_target_len=64,
        model=Seq2SeqConfig(d_model=512, n_heads=8, n_enc_layers=6, n_dec_layers=6, d_ff=2048),
        epochs=5,
    )


def course_decode() -> DecodeConfig:
    """The course's decoding: 4 beams, and (very probably) the library's default cap of 20 tokens."""
    return DecodeConfig(num_beams=4, max_new_tokens=20, no_repeat_ngram_size=0, no_immediate_repeat=False)


# ---------------------------------------------------------------------------------------------
# data and model


def load_splits(cfg: TrainConfig) -> tuple[list[sd.SummaryExample], list[sd.SummaryExample]]:
    """(training examples, validation examples) of ``cfg.data``, cut to the configured sizes."""
    if cfg.data == "dialogsum":
        train, val = sd.load_dialogsum("train"), sd.load_dialogsum("validation")
    else:
        train, val = sd.load_xsum_cs182("train"), sd.load_xsum_cs182("validation")
    return train[: cfg.train_examples], val[: cfg.val_examples]


def make_tokenizer(cfg: TrainConfig, train: Sequence[sd.SummaryExample]) -> Tokenizer:
    if cfg.tokenizer is not None:
        return sd.pretrained_tokenizer(cfg.tokenizer)
    extra = sd.SPEAKER_TAGS if cfg.data == "dialogsum" else ()
    return sd.train_tokenizer(sd.tokenizer_texts(train), cfg.model.vocab_size, extra_tokens=extra)


def tokenizer_json(cfg: TrainConfig, train: Sequence[sd.SummaryExample]) -> str:
    """:func:`make_tokenizer` serialized (what the run cache stores)."""
    return make_tokenizer(cfg, train).to_str()


def model_config(cfg: TrainConfig, tokenizer: Tokenizer) -> Seq2SeqConfig:
    """``cfg.model`` with the tokenizer's vocabulary size and special token ids."""
    ids = sd.special_ids(tokenizer)
    return replace(cfg.model, vocab_size=tokenizer.get_vocab_size(), pad_id=ids.pad,
                   bos_id=ids.bos, eos_id=ids.eos)


def load_trained(result: dict[str, Any]) -> tuple[Seq2SeqTransformer, Tokenizer]:
    """The model (on the CPU, in eval mode) and tokenizer of a result of :func:`train`."""
    model = Seq2SeqTransformer(Seq2SeqConfig(**result["model_config"]))
    model.load_state_dict(result["state_dict"])
    return model.eval(), Tokenizer.from_str(result["tokenizer"])


# ---------------------------------------------------------------------------------------------
# training


def lr_factor(step: int, progress_fraction: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` steps times linear decay to 0 at progress 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * max(0.0, 1.0 - progress_fraction)


def _losses(
    model: Seq2SeqTransformer, batch: sd.Batch, label_smoothing: float,
    net: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label-smoothed loss to minimise, plain cross-entropy to report), per target
    token. ``net`` runs the forward pass: ``model`` in a DDP wrapper (default: model).
    """
    logits = (net or model)(batch.src, batch.tgt_in).flatten(0, 1).float()  # [B*T, V]
    target = batch.tgt_out.flatten()  # [B*T]
    pad = model.cfg.pad_id
    loss = F.cross_entropy(logits, target, ignore_index=pad, label_smoothing=label_smoothing)
    if label_smoothing == 0.0:
        return loss, loss.detach()
    return loss, F.cross_entropy(logits.detach(), target, ignore_index=pad)


def _to(batch: sd.Batch, device: str) -> sd.Batch:
    return sd.Batch(*(t.to(device) for t in (batch.src, batch.tgt_in, batch.tgt_out, batch.index)))


@torch.no_grad()
def validation_loss(
    model: Seq2SeqTransformer, split: sd.EncodedSplit, *, batch_size: int = 64,
    bf16: bool = False, device: str = "cpu",
) -> float:
    """Cross-entropy per target token (nats) over a whole split, teacher forced. With
    several processes each scores every ``world_size``-th batch; sums are reduced."""
    world, rank = dist.world_size(), dist.rank()
    with eval_mode(model):
        total, tokens = 0.0, 0
        for i, batch in enumerate(split.batches(batch_size, shuffle=False)):
            if i % world != rank:
                continue
            batch = _to(batch, device)
            with autocast(bf16, device):
                _, ce = _losses(model, batch, 0.0)
            n = int((batch.tgt_out != model.cfg.pad_id).sum())
            total, tokens = total + ce.item() * n, tokens + n
    if world > 1:
        total, tokens = dist.all_sum(total, tokens)
    return total / tokens


@torch.no_grad()
def source_use(
    model: Seq2SeqTransformer, split: sd.EncodedSplit, *, batch_size: int = 64, bf16: bool = False
) -> dict[str, float]:
    """Does the model read its input? The validation cross-entropy per target token (nats) of the
    summaries given their own documents (``right``) and given another example's document
    (``wrong``: the documents of each batch rotated by one; batches group similar lengths, so the
    swapped document is about as long). A model that ignores the document scores the same on both;
    ``gain = wrong - right`` is what the document is worth to it."""
    device = next(model.parameters()).device
    with eval_mode(model):
        totals = {"right": 0.0, "wrong": 0.0}
        tokens = 0
        for batch in split.batches(batch_size, shuffle=False):
            batch = _to(batch, device)
            n = int((batch.tgt_out != model.cfg.pad_id).sum())
            for name, src in (("right", batch.src), ("wrong", batch.src.roll(1, dims=0))):
                with autocast(bf16, device):
                    loss = model.loss(src, batch.tgt_in, batch.tgt_out)
                totals[name] += loss.item() * n
            tokens += n
    out = {k: v / tokens for k, v in totals.items()}
    out["gain"] = out["wrong"] - out["right"]
    return out


def train(cfg: TrainConfig, *, show_progress: bool | None = None) -> dict[str, Any]:
    """Train a summarizer; see the module docstring. Returns a dict for :func:`torch.save`:
    ``config``, ``model_config``, ``state_dict``, ``tokenizer`` (JSON), ``curves`` (per step:
    ``step``, ``train_loss`` (plain cross-entropy), ``lr``; per evaluation: ``val_step``,
    ``val_epoch``, ``val_loss``), ``steps``, ``epochs``, ``parameters``, ``train_tokens``
    (source + target tokens without padding), ``seconds`` (wall time, validation included) and
    ``tokens_per_second`` (training steps only).

    Under ``torchrun``/``accelerate launch`` the processes train one model data-parallel
    (:mod:`dgmbook.distributed`): ``batch_size`` is the global batch, each process
    trains on its share, and every process returns the same result (rank 0 alone shows
    progress and computes the ROUGE curve)."""
    world = dist.setup(cfg.device)
    seed_everything(cfg.seed)
    train_ex, val_ex = load_splits(cfg)
    tokenizer = make_tokenizer(cfg, train_ex)
    train_enc = sd.encode_split(tokenizer, train_ex, cfg.max_source_len, cfg.max_target_len)
    val_enc = sd.encode_split(tokenizer, val_ex, cfg.max_source_len, cfg.max_target_len)
    model = Seq2SeqTransformer(model_config(cfg, tokenizer)).to(cfg.device).train()
    net = dist.wrap(model)  # model itself with one process
    dist.seed_dropout(cfg.seed)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, cfg.beta2),
    )
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    step_budgets = [b for b in (cfg.max_steps, cfg.epochs and math.ceil(cfg.epochs * steps_per_epoch)) if b]
    max_steps = min(step_budgets) if step_budgets else None

    def used(step: int, seconds: float) -> float:
        fractions = [step / max_steps] if max_steps else []
        if cfg.minutes is not None:
            fractions.append(seconds / (60 * cfg.minutes))
        return max(fractions)

    def elapsed() -> float:
        """Seconds since the start; with several processes the slowest one's, so that
        every process sets the same learning rate and a time budget ends at once."""
        seconds = time.perf_counter() - start
        return dist.all_max(seconds) if world > 1 else seconds

    curve_names = ("step", "train_loss", "lr", "val_step", "val_epoch", "val_loss")
    curves: dict[str, list[float]] = {k: [] for k in curve_names}
    rouge_curve: dict[str, list[float]] = {k: [] for k in ("examples", "seconds", *ROUGE_TYPES)}
    rouge_examples = val_ex[: cfg.curve_rouge]

    validation_seconds = 0.0

    def record_validation(step: int) -> None:
        nonlocal validation_seconds
        t0 = time.perf_counter()
        curves["val_step"].append(step)
        curves["val_epoch"].append(step / steps_per_epoch)
        curves["val_loss"].append(validation_loss(model, val_enc, bf16=cfg.bf16, device=cfg.device))
        validation_seconds += time.perf_counter() - t0

    def record_rouge(examples: int) -> None:
        """A point of the ROUGE curve: training seconds so far (evaluations not counted)."""
        nonlocal validation_seconds
        t0 = time.perf_counter()
        train_seconds = t0 - start - validation_seconds
        with eval_mode(model):
            preds = summarize(model, tokenizer, [e.document for e in rouge_examples],
                              max_source_len=cfg.max_source_len)
        scores = evaluation.rouge_scores(preds, [e.references for e in rouge_examples],
                                         multi_ref="first")
        rouge_curve["examples"].append(examples)
        rouge_curve["seconds"].append(train_seconds)
        for k in ROUGE_TYPES:
            rouge_curve[k].append(scores[k])
        validation_seconds += time.perf_counter() - t0

    step, tokens, start, done = 0, 0, time.perf_counter(), False
    seen = 0  # training examples
    rouge_examples = rouge_examples if dist.is_main() else []
    if rouge_examples:
        record_rouge(0)
    show = show_progress and dist.is_main()
    bar = sd.progress_bar(show, total=max_steps, desc="training")
    epoch = 0
    lengths = [len(s) for s in train_enc.sources]
    pad = model.cfg.pad_id
    while not done:
        order = sd.length_batches(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                  epoch=epoch)
        for idx in order:
            mine = dist.shard(idx)  # this process's share (all of the batch with one)
            if mine is None:
                continue
            batch = _to(train_enc.batch(mine), cfg.device)
            lr = cfg.lr * lr_factor(step, used(step, elapsed()), cfg.warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast(cfg.bf16, cfg.device):
                loss, ce = _losses(model, batch, cfg.label_smoothing, net)
            n_tokens = int((batch.src != pad).sum() + (batch.tgt_out != pad).sum())
            if world > 1:  # weight by the share of target tokens; global loss
                n_target = int((batch.tgt_out != pad).sum())
                weight, total_target = dist.token_weight(n_target)
                loss = loss * weight
                ce_sum, n_tokens = dist.all_sum(ce.item() * n_target, n_tokens)
                ce = torch.tensor(ce_sum / total_target)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the processes here
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            seen += len(idx)
            tokens += int(n_tokens)
            every = cfg.curve_every
            if rouge_examples and seen // every > (seen - len(idx)) // every:
                record_rouge(seen)
            curves["step"].append(step)
            curves["train_loss"].append(ce.item())
            curves["lr"].append(lr)
            bar.update(1)
            bar.set_postfix(loss=f"{ce.item():.3f}", refresh=False)
            if used(step, elapsed()) >= 1.0:
                done = True
                break
        epoch += 1
        if not done:
            record_validation(step)
    record_validation(step)
    if rouge_examples and rouge_curve["examples"][-1] != seen:
        record_rouge(seen)
    bar.close()
    seconds = time.perf_counter() - start
    return {
        "config": asdict(cfg),
        "model_config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.to_str(),
        "curves": curves,
        "rouge_curve": rouge_curve,
        "examples_seen": seen,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "parameters": count_parameters(model),
        "train_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / (seconds - validation_seconds),
    }


# ---------------------------------------------------------------------------------------------
# generation and evaluation


def summarize(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    documents: Sequence[str],
    decode: DecodeConfig = DecodeConfig(),
    *,
    max_source_len: int = 256,
    batch_size: int = 32,
    bf16: bool = False,
    show_progress: bool | None = None,
) -> list[str]:
    """One generated summary per document (inputs cut as in training), in the input order.
    Documents are decoded in batches of similar length."""
    sources = sd.encode_texts(tokenizer, documents, max_source_len)
    pad = model.cfg.pad_id
    device = next(model.parameters()).device
    out: list[str] = [""] * len(sources)
    order = sd.length_batches([len(s) for s in sources], batch_size, shuffle=False)
    for idx in sd.progress_bar(show_progress, iterable=order, desc="decoding"):
        src = sd.pad_sequences([sources[i] for i in idx], pad)
        with autocast(bf16, device.type):
            gen = generate(model, src.to(device), **asdict(decode))
        for i, tokens in zip(idx, gen.tokens):
            out[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return out


def evaluate(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    examples: Sequence[sd.SummaryExample],
    decode: DecodeConfig = DecodeConfig(),
    **summarize_kwargs,
) -> dict[str, Any]:
    """:func:`dgmbook.summarization.evaluation.evaluate` of this model's :func:`summarize`
    (keyword arguments go to it): summaries, ROUGE under both multi-reference rules, words per
    summary, seconds per example."""
    system = functools.partial(summarize, model, tokenizer, decode=decode, **summarize_kwargs)
    return evaluation.evaluate(system, examples)


def full_experiment(progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full run for ``python -m dgmbook full``: train :func:`full_config`, then ROUGE on the
    DialogSum test set (greedy and 4 beams) and on the XSum sample (4 beams), each with its
    repetition statistics and its first summaries, the validation-loss curve and
    :func:`source_use`. Returns ``(config, metrics)``.

    It trains on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by default),
    data-parallel under ``torchrun``/``accelerate launch`` (:mod:`dgmbook.distributed`);
    then rank 0 alone evaluates, and the other processes return empty metrics."""
    cfg = replace(full_config(), device=devices.resolve())
    result = train(cfg, show_progress=progress)
    if not dist.is_main():
        return asdict(cfg), {}
    model, tokenizer = load_trained(result)
    model.to(cfg.device)
    kw = dict(max_source_len=cfg.max_source_len, show_progress=progress)
    metrics: dict[str, Any] = {
        k: result[k]
        for k in ("steps", "epochs", "parameters", "train_tokens", "seconds", "tokens_per_second")
    }
    metrics["final_val_loss"] = result["curves"]["val_loss"][-1]
    metrics["val_curve"] = {k: result["curves"][k] for k in ("val_step", "val_epoch", "val_loss")}
    _, val = load_splits(cfg)
    metrics["source_use"] = source_use(
        model, sd.encode_split(tokenizer, val, cfg.max_source_len, cfg.max_target_len), bf16=cfg.bf16
    )

    def system_for(decode: DecodeConfig) -> evaluation.System:
        return functools.partial(summarize, model, tokenizer, decode=decode, **kw)

    metrics.update(evaluation.full_run_evaluation(system_for, repetition_tokenizer=tokenizer))
    return asdict(cfg), metrics


# ---------------------------------------------------------------------------------------------
# command line

PRESETS = {"book": book_config, "full": full_config, "course": course_config}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgmbook.summarization.scratch", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="book")
    parser.add_argument("--minutes", type=float, help="a time budget (replaces the preset's budgets)")
    parser.add_argument("--steps", type=int, help="a step budget (replaces the preset's budgets)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval", type=int, default=100, metavar="N",
                        help="ROUGE on the first N test dialogues (0: none)")
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--out", help="save the result dict here (torch.save)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]()
    if args.minutes is not None or args.steps is not None:
        cfg = replace(cfg, minutes=args.minutes, max_steps=args.steps, epochs=None)
    cfg = replace(cfg, bf16=not args.no_bf16, device=args.device)
    result = train(cfg, show_progress=True)
    print(f"{result['steps']} steps ({result['epochs']:.2f} epochs) in {result['seconds']:.0f} s, "
          f"{result['tokens_per_second']:.0f} tokens/s, {result['parameters']:,} parameters, "
          f"validation loss {result['curves']['val_loss'][-1]:.3f}")
    if args.out:
        torch.save(result, args.out)
        print(f"saved {args.out}")
    if args.eval:
        model, tokenizer = load_trained(result)
        test = sd.load_dialogsum("test")[: args.eval]
        t0 = time.perf_counter()
        scores = evaluate(model.to(args.device), tokenizer, test, DecodeConfig(num_beams=args.beams),
                          max_source_len=cfg.max_source_len, show_progress=True)
        print(f"decoded {len(test)} test dialogues in {time.perf_counter() - t0:.0f} s")
        for rule in ("first", "max"):
            r = scores[f"rouge_{rule}"]
            print(f"ROUGE-1/2/L ({rule} reference): "
                  f"{r['rouge1']:.1f} / {r['rouge2']:.1f} / {r['rougeL']:.1f}")
        for ex, pred in list(zip(test, scores["predictions"]))[:3]:
            print(f"- reference: {ex.references[0]}\n  generated: {pred}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
