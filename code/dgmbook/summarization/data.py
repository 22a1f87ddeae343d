"""Summarization data: DialogSum and the XSum sample as examples, DialogSum's speaker tags, a BPE
tokenizer trained on the training split, and the batching pipeline (chapter "Summarization I"),
with the helpers every summarizer's loops use: :func:`length_batches`, :func:`pad_sequences`,
:func:`progress_bar`.

Data
----
* :func:`load_dialogsum` -- DialogSum (Chen et al. 2021): 12,460 train / 500 validation / 500 test
  dialogues. Train and validation have one human summary, test has three (``summary1..3``); every
  example keeps all of its references in :attr:`SummaryExample.references`.
* :func:`load_xsum_sample` -- the 1,000 real XSum test pairs (one reference each), used for
  out-of-domain evaluation.
* :func:`load_xsum_cs182` -- the course's XSum subset (24,350 / 1,281 / 1,326 examples of the
  official splits), for machines that can reach the Hugging Face hub; only its index handling runs
  offline (:func:`select_subset`).

Tokens and batches
------------------
``train_tokenizer`` trains a byte-level BPE (GPT-2/BART style: lossless round trip, no unknown
characters) with the special tokens ``<pad> <s> </s> <unk>`` = ids 0, 1, 2, 3; DialogSum's speaker
tags (``#Person1#`` ...) can be kept whole as extra tokens, each with the whitespace in front of
it (decoded as one space: :func:`spaced_tags`). ``encode_split`` turns examples into id lists
with stated truncation (the book uses 256 source and 64 target tokens)::

    source = document ids[: max_source_len - 1] + [EOS]          (encoder input)
    target = summary  ids[: max_target_len - 1] + [EOS]          (first reference)
    decoder input  = [BOS] + target[:-1]      labels = target    (teacher forcing)

``EncodedSplit.batches`` pads on the right and batches by length: the examples are shuffled
(seeded by ``(seed, epoch)``), cut into buckets of ``bucket_factor * batch_size``, sorted by source
length inside each bucket, cut into batches, and the batch order is shuffled again, so that
padding is small while batches stay random. Every example lands in exactly one batch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..data import dataset_file, read_jsonl
from ..utils import progress

DIALOGSUM_SPLITS = ("train", "validation", "test")

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in a tokenizer from train_tokenizer
# The speaker tags of DialogSum (#Person3# and beyond are rare, #Person7# is the last): single
# tokens of the from-scratch model's tokenizer (train_tokenizer) and of BERT2BERT's
# (bert2bert.add_speaker_tags).
SPEAKER_TAGS = tuple(f"#Person{i}#" for i in range(1, 8))


@dataclass(frozen=True)
class SummaryExample:
    """A document (a dialogue or a news article) and its reference summaries (one or more)."""

    id: str
    document: str
    references: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# loaders


def load_dialogsum(split: str) -> list[SummaryExample]:
    """DialogSum's ``"train"`` (12,460), ``"validation"`` (500) or ``"test"`` (500) split.

    The document is the dialogue (turns ``#Person1#: ...`` separated by newlines); test examples
    carry their three references in the dataset's order ``summary1, summary2, summary3``."""
    if split not in DIALOGSUM_SPLITS:
        raise ValueError(f"DialogSum has no split {split!r}; use one of {DIALOGSUM_SPLITS}")
    out = []
    for rec in read_jsonl("dialogsum", f"{split}.jsonl"):
        if "summary" in rec:
            refs: tuple[str, ...] = (rec["summary"],)
        else:
            refs = tuple(rec[k] for k in sorted(rec) if k.startswith("summary"))
        if not refs:
            raise ValueError(f"DialogSum {split} record {rec.get('id')!r} has no summary field")
        out.append(SummaryExample(rec["id"], rec["dialogue"], refs))
    return out


def load_xsum_sample() -> list[SummaryExample]:
    """The 1,000 XSum test pairs of the data root (BBC article, one-sentence summary)."""
    return [
        SummaryExample(str(rec["id"]), rec["document"], (rec["summary"],))
        for rec in read_jsonl("xsum", "test-1000.jsonl")
    ]


# --- the course's XSum subset (needs the hub) --------------------------------------------------

XSUM_HUB_ID = "EdinburghNLP/xsum"
XSUM_SPLITS = ("train", "validation", "test")


def load_cs182_indices() -> dict[str, list[int]]:
    """The CS 182 homework's XSum subset: for each official split, the row indices it keeps
    (24,350 train, 1,281 validation, 1,326 test), checked by :func:`check_indices`."""
    path = dataset_file("xsum", "cs182-subset-indices.json")
    indices = json.loads(Path(path).read_text())
    for split in XSUM_SPLITS:
        if split not in indices:
            raise ValueError(f"{path} has no {split!r} indices; it has {sorted(indices)}")
    return {split: check_indices(indices[split]) for split in XSUM_SPLITS}


def check_indices(indices: Sequence[int], n_rows: int | None = None) -> list[int]:
    """``indices`` as a list, after checking that they are distinct non-negative integers in
    increasing order and, when ``n_rows`` is given, below it."""
    out = [int(i) for i in indices]
    if any(i != j for i, j in zip(out, indices)):
        raise ValueError("subset indices must be integers")
    if out and out[0] < 0:
        raise ValueError(f"subset indices must be non-negative; the first is {out[0]}")
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise ValueError(f"subset indices must be strictly increasing; {a} is followed by {b}")
    if n_rows is not None and out and out[-1] >= n_rows:
        raise ValueError(f"subset index {out[-1]} is out of range for a split of {n_rows} rows")
    return out


def select_subset(rows: Sequence[dict], indices: Sequence[int]) -> list[SummaryExample]:
    """The rows at ``indices`` of an XSum split (records with ``id``, ``document``, ``summary``,
    as the hub's ``EdinburghNLP/xsum`` serves them), as examples."""
    keep = check_indices(indices, n_rows=len(rows))
    return [
        SummaryExample(str(rows[i]["id"]), rows[i]["document"], (rows[i]["summary"],))
        for i in keep
    ]


def load_xsum_cs182(split: str) -> list[SummaryExample]:
    """The course's XSum subset of one split, read from the Hugging Face hub.

    Needs the ``datasets`` package (not in this book's requirements) and network access to the
    hub; raises :class:`RuntimeError` saying so when either is missing."""
    if split not in XSUM_SPLITS:
        raise ValueError(f"XSum has no split {split!r}; use one of {XSUM_SPLITS}")
    indices = load_cs182_indices()[split]
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(
            "the course's XSum recipe reads the official XSum splits from the Hugging Face hub, "
            "which needs the `datasets` package (`pip install datasets`) and network access; "
            "offline, use load_dialogsum() and load_xsum_sample() instead"
        ) from e
    try:
        rows = datasets.load_dataset(XSUM_HUB_ID, split=split)
    except Exception as e:  # offline, hub refused, ...: the library raises many kinds
        raise RuntimeError(
            f"could not load {XSUM_HUB_ID!r} split {split!r} from the Hugging Face hub ({e}); "
            "the course's XSum recipe needs hub access"
        ) from e
    return select_subset(rows, indices)


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    extra_tokens: Sequence[str] = (),
) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (e.g. training documents and summaries),
    with ``<pad> <s> </s> <unk>`` as ids 0-3 and ``vocab_size`` tokens in all. Encoding adds no
    special tokens by itself.

    Byte-level: the 256 byte symbols are in the initial alphabet, so every string is encoded
    without ``<unk>`` and ``decode(encode(s).ids) == s``. ``extra_tokens`` are whole strings kept
    as one token each (the last ids), e.g. DialogSum's speaker tags :data:`SPEAKER_TAGS`,
    which BPE would otherwise split into four pieces (``# Person 1 #``). An extra token absorbs
    the whitespace in front of it: ``" #Person1#"`` is the one token ``#Person1#``, not a space
    token and the tag, so that "#Person1# #Person1#" is one token twice in a row, which the
    no-immediate-repeat rule of :mod:`.decoding` forbids. Decoding writes one space in front of
    each extra token, so ``decode(encode(s).ids) == spaced_tags(s, extra_tokens)``
    (:func:`spaced_tags`): the whitespace before an extra token becomes one space."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(extra_tokens),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(t, lstrip=True, normalized=False) for t in extra_tokens])
        # "Ġ" is the byte-level alphabet's space: the decoder turns it into " " with the rest
        spaced = [decoders.Replace(t, "\u0120" + t) for t in extra_tokens]
        tokenizer.decoder = decoders.Sequence([*spaced, decoders.ByteLevel()])
    return tokenizer


def spaced_tags(text: str, tags: Sequence[str] = SPEAKER_TAGS) -> str:
    """``text`` with the whitespace before each of ``tags`` (or none) made one space: what a
    tokenizer from :func:`train_tokenizer` with ``tags`` as extra tokens decodes ``text`` to (a
    tag that starts the text, too, gets a space in front). Everything else is left as it is."""
    if not tags:
        return text
    tag = "|".join(map(re.escape, tags))
    return re.sub(rf"(?:\s+|(?<!\s))(?={tag})", " ", text)


def tokenizer_texts(examples: Iterable[SummaryExample]) -> Iterator[str]:
    """What a tokenizer is trained on: every document and every reference."""
    for ex in examples:
        yield ex.document
        yield from ex.references


def pretrained_tokenizer(name: str) -> Tokenizer:
    """A tokenizer from the Hugging Face hub (e.g. ``"t5-small"``, the course's), for machines
    with hub access; raises :class:`RuntimeError` saying so when it cannot be fetched."""
    try:
        return Tokenizer.from_pretrained(name)
    except Exception as e:  # offline, unknown name, ...: the library raises many kinds
        raise RuntimeError(
            f"could not fetch the tokenizer {name!r} from the Hugging Face hub ({e}); offline, "
            "train one on the training split with train_tokenizer()"
        ) from e


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write the tokenizer as JSON (the ``tokenizers`` format) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by :func:`save_tokenizer`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    return Tokenizer.from_file(str(path))


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids of ``<pad>``, ``<s>`` and ``</s>``. A tokenizer without ``<s>`` (T5's) starts
    decoding from ``<pad>``, as T5 does."""
    pad, eos = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
    if pad is None or eos is None:
        raise ValueError(f"the tokenizer must have {PAD!r} and {EOS!r} tokens")
    bos = tokenizer.token_to_id(BOS)
    return SpecialIds(pad=pad, bos=pad if bos is None else bos, eos=eos)


# ---------------------------------------------------------------------------------------------
# encoding and batching


@dataclass
class Batch:
    """A padded batch (right padding with ``pad``)."""

    src: torch.Tensor  # int64 [B, S]: document ids + EOS
    tgt_in: torch.Tensor  # int64 [B, T]: BOS + summary ids (decoder input)
    tgt_out: torch.Tensor  # int64 [B, T]: summary ids + EOS (labels), pad where tgt_in is pad
    index: torch.Tensor  # int64 [B]: positions of the examples in their EncodedSplit

    def __len__(self) -> int:
        return len(self.index)


LENGTH_MULTIPLE = 32
ENCODE_CHUNK = 512


def chunked(items: Sequence, size: int = ENCODE_CHUNK) -> Iterator[Sequence]:
    """``items`` in consecutive slices of ``size``. Tokenizers return an ``Encoding`` object per
    text (tokens, offsets, masks): for all 12,460 training dialogues at once that is about half a
    gigabyte held at the same time, when only the ids are kept."""
    for start in range(0, len(items), size):
        yield items[start:start + size]



def pad_sequences(seqs: Sequence[Sequence[int]], value: int,
                  multiple: int = LENGTH_MULTIPLE) -> torch.Tensor:
    """int64 [len(seqs), L]: the sequences as rows, right-padded with ``value`` to the longest
    one's length rounded up to a multiple of ``multiple``.

    Why round: the CPU's math library (oneDNN) compiles and caches kernels per tensor shape, and
    length-bucketed batches have hundreds of distinct lengths. With exact lengths a from-scratch
    training run grew by about 15 MB a step (2.2 GiB after 20 steps, 3.6 GiB after 160, on the
    way past Binder's 2 GiB); rounded to 32 it stays at 1.8 GiB and steps are about 10% faster.
    Padding is masked everywhere, so only the shapes change."""
    longest = max(len(s) for s in seqs)
    out = torch.full((len(seqs), -(-longest // multiple) * multiple), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def progress_bar(show: bool | None, **kwargs):
    """A progress bar (training, decoding batches): shown where :func:`dgmbook.utils.progress`
    decides (in a terminal, not in a notebook), unless ``show`` says."""
    if show is not None:
        kwargs["disable"] = not show
    return progress(**kwargs)


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    bucket_factor: int = 50,
) -> list[list[int]]:
    """Indices ``0..len(lengths)-1`` cut into batches of similar length; each index exactly once.

    ``shuffle=False``: sorted by decreasing length (for decoding a split). ``shuffle=True``: a
    permutation seeded by ``(seed, epoch)``, sorted by decreasing length within buckets of
    ``bucket_factor * batch_size`` examples, batched, and the batches put in a seeded random
    order. Deterministic given ``(seed, epoch)``."""
    if batch_size < 1 or bucket_factor < 1:
        raise ValueError(f"batch_size ({batch_size}) and bucket_factor ({bucket_factor}) must be >= 1")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    bucket = batch_size * bucket_factor
    batches = []
    for start in range(0, n, bucket):
        chunk = sorted(perm[start : start + bucket], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


@dataclass
class EncodedSplit:
    """A split as token ids: ``sources[i]`` ends with EOS, ``targets[i]`` (the first reference)
    ends with EOS. ``examples`` keeps the texts (for decoding and ROUGE)."""

    examples: list[SummaryExample]
    sources: list[list[int]]
    targets: list[list[int]]
    ids: SpecialIds

    def __len__(self) -> int:
        return len(self.sources)

    def batch(self, indices: Sequence[int]) -> Batch:
        tgt = [self.targets[i] for i in indices]
        tgt_in = pad_sequences([[self.ids.bos] + t[:-1] for t in tgt], self.ids.pad)
        return Batch(
            src=pad_sequences([self.sources[i] for i in indices], self.ids.pad),
            tgt_in=tgt_in,
            tgt_out=pad_sequences(tgt, self.ids.pad),
            index=torch.tensor(list(indices), dtype=torch.long),
        )

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        """The split in length-bucketed batches (see :func:`length_batches`)."""
        lengths = [len(s) for s in self.sources]
        for idx in length_batches(lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch):
            yield self.batch(idx)

    def num_tokens(self) -> tuple[int, int]:
        """(source tokens, target tokens) in the split, padding excluded."""
        return sum(map(len, self.sources)), sum(map(len, self.targets))


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Each text's ids truncated to ``max_len - 1``, then EOS: the encoder's input format."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 (one token and EOS), got {max_len}")
    eos = special_ids(tokenizer).eos
    texts = list(texts)
    out = []
    for chunk in chunked(texts):
        encodings = tokenizer.encode_batch(chunk, add_special_tokens=False)
        out += [enc.ids[: max_len - 1] + [eos] for enc in encodings]
    return out


def encode_split(
    tokenizer: Tokenizer,
    examples: Sequence[SummaryExample],
    max_source_len: int = 256,
    max_target_len: int = 64,
) -> EncodedSplit:
    """Tokenize documents (cut to ``max_source_len`` tokens, EOS included) and first references
    (cut to ``max_target_len`` tokens, EOS included)."""
    examples = list(examples)
    return EncodedSplit(
        examples=examples,
        sources=encode_texts(tokenizer, [ex.document for ex in examples], max_source_len),
        targets=encode_texts(tokenizer, [ex.references[0] for ex in examples], max_target_len),
        ids=special_ids(tokenizer),
    )
