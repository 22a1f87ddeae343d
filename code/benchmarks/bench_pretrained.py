"""Speed of chapter "Summarization II": BERT2BERT fine-tuning (fp32 vs bf16 autocast), batched
greedy generation, optimizer-state memory, and SmolLM2-135M-Instruct prompting.

    DGMBOOK_DATA=../shared/data HF_HUB_OFFLINE=1 python code/benchmarks/bench_pretrained.py
    ... --threads 2 --steps 8 --llm-examples 16

What it measures, on DialogSum (inputs cut to 256 tokens):
  * training examples/s of BERT2BERT warm-started from MiniLM (batch 16, AdamW, gradient clipping,
    dropout off as in the book run), fp32 and bf16 autocast, after two warm-up steps;
  * the bytes of optimizer state after one step, AdamW and Adafactor;
  * greedy generation s/example (batches of 32, the from-scratch chapter's decoding settings:
    at most 64 new tokens, no repeated trigram) of the *untrained* model, whose summaries run to
    the 64-token cap: an upper bound for a fine-tuned model;
  * SmolLM2-135M-Instruct s/example with the one-sentence prompt (greedy, max 60 new tokens), on
    DialogSum test dialogues and XSum test articles, one prompt at a time and batched by 8
    (fp32 and bf16 autocast).

Wall-clock times are inflated when other jobs share the cores; CPU seconds are printed beside
them, and the load average, to judge how much.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import replace

import torch

from dgmbook.summarization import bert2bert, llm
from dgmbook.summarization.data import length_batches, load_dialogsum, load_xsum_sample
from dgmbook.summarization.decoding import DecodeConfig
from dgmbook.utils import autocast


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def bench_training(steps: int) -> None:
    model, tokenizer = bert2bert.build_bert2bert()
    bert2bert.set_dropout(model, 0.0)
    start, eos, pad = bert2bert.special_token_ids(model)
    data = bert2bert.encode(tokenizer, load_dialogsum("train")[: 16 * (steps + 2)], eos)
    batches = [bert2bert.collate(data, idx, start, pad)
               for idx in length_batches([len(s) for s in data.sources], 16, shuffle=True)]
    cfg = bert2bert.book_config()
    model.train()

    def step(batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, bf16: bool) -> None:
        with autocast(bf16):
            loss = bert2bert.sequence_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for bf16 in (False, True):
        optimizer = bert2bert.make_optimizer(model, cfg)
        for batch in batches[:2]:  # warm-up (oneDNN kernels, optimizer state)
            step(batch, optimizer, bf16)
        with Timer() as t:
            for batch in batches[2:]:
                step(batch, optimizer, bf16)
        seen = sum(len(b["input_ids"]) for b in batches[2:])
        print(f"BERT2BERT training, {'bf16 autocast' if bf16 else 'fp32         '}: "
              f"{seen / t.wall:6.2f} examples/s wall  {seen / t.cpu:6.2f} examples/CPU-s", flush=True)
    for name in bert2bert.OPTIMIZERS:
        optimizer = bert2bert.make_optimizer(model, replace(cfg, optimizer=name))
        step(batches[0], optimizer, bf16=True)
        print(f"optimizer state after one step, {name:9s}: "
              f"{bert2bert.optimizer_state_bytes(optimizer) / 2**20:8.1f} MiB", flush=True)


def bench_generation(n: int) -> None:
    model, tokenizer = bert2bert.build_bert2bert()
    documents = [ex.document for ex in load_dialogsum("test")[:n]]
    bert2bert.summarize(model, tokenizer, documents[:4], DecodeConfig(max_new_tokens=4))  # warm-up
    for bf16 in (False, True):
        with Timer() as t:
            bert2bert.summarize(model, tokenizer, documents, bf16=bf16)
        print(f"BERT2BERT greedy generation (untrained, 64 tokens), {'bf16' if bf16 else 'fp32'}: "
              f"{t.wall / n:.3f} s/example wall  {t.cpu / n:.3f} CPU-s/example", flush=True)


def bench_llm(n: int) -> None:
    with Timer() as t:
        llm.load_smollm2()
    print(f"SmolLM2-135M-Instruct load: {t.wall:.1f} s", flush=True)
    sets = {"DialogSum": load_dialogsum("test")[:n], "XSum": load_xsum_sample()[:n]}
    for name, examples in sets.items():
        texts = [ex.document for ex in examples]
        for batch_size, bf16 in ((1, False), (8, False), (8, True)):
            with Timer() as t:
                llm.summarize(texts, llm.ONE_SENTENCE, batch_size=batch_size, bf16=bf16)
            print(f"SmolLM2 one-sentence prompt, {name:9s} batch {batch_size}, {'bf16' if bf16 else 'fp32'}: "
                  f"{t.wall / n:.3f} s/example wall  {t.cpu / n:.3f} CPU-s/example", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps of 16 examples")
    parser.add_argument("--gen-examples", type=int, default=64, help="dialogues for generation")
    parser.add_argument("--llm-examples", type=int, default=16, help="texts per dataset for SmolLM2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    bench_training(args.steps)
    bench_generation(args.gen_examples)
    bench_llm(args.llm_examples)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
