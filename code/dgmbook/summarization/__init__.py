"""Summarization (chapters "Summarization I" and "Summarization II"): three systems that turn
documents into summaries, and what they share.

==============  ===============================================================================
``data``        DialogSum and the XSum sample, the speaker tags, the byte-level BPE tokenizer
                (speaker tags as single tokens), encoding, length-bucketed batches, padding
``model``       the hand-written Transformer encoder-decoder, with its KV cache
``decoding``    greedy and beam search, ``DecodeConfig``, the repetition rules (n-gram blocking,
                no immediate repeat) as functions of (scores, tokens generated so far)
``evaluation``  ROUGE, ``evaluate(system, examples)`` for every system (a system maps a list of
                documents to a list of summaries), repetition statistics, a full run's evaluation
``hf``          Hugging Face helpers: the weight packages' folders, quiet ``transformers``,
                decoding's rules as a ``LogitsProcessor``, ``DecodeConfig`` as ``generate`` kwargs
``scratch``     system 1, trained from scratch: ``TrainConfig`` (the model's shape as one nested
                ``Seq2SeqConfig``), ``train``, ``load_trained``, presets, the full run, and
                ``python -m dgmbook.summarization.scratch``
``bert2bert``   system 2, BERT2BERT fine-tuned from MiniLM: AdamW or Adafactor, presets, full run
``llm``         system 3, SmolLM2-135M-Instruct prompted (offline, GGUF), prompt templates
==============  ===============================================================================

Imports run one way, down this list, and no system imports another::

    data <- model <- scratch
    data <- decoding <- evaluation <- scratch, bert2bert, llm
            decoding <- hf <- bert2bert, llm

``decoding`` does not import ``model`` (it types the model it searches with a protocol): the run
cache keys a run by the package modules its function reaches through imports
(:mod:`dgmbook.runcache.codekey`), so editing the from-scratch trainer or its Transformer does
not retrain BERT2BERT or re-run the LLM, and editing those does not retrain the from-scratch
model. For the same reason this file imports nothing (the cache counts a module's parent
package too): import the modules themselves, ``from dgmbook.summarization import scratch``.
"""
