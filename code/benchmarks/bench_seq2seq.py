"""Speed of the hand-written encoder-decoder (chapter "Summarization I").

1. Greedy decoding with and without the KV cache, for 16 ... 256 new tokens at batch 1 and 16
   (target: the cache at least 4x faster at 128 tokens). Without the cache every step re-runs
   the decoder, cross-attention projections included, on the whole prefix; the encoder runs once
   in both, and both compute the newest position's logits with the same output layer. Also
   printed: the encoder's time and a cached step's (the rest of a cached run, per token).
2. Against a peer: Hugging Face's ``BartForConditionalGeneration`` built from a config of the same
   shape (d_model, layers, heads, d_ff, vocabulary, tied embeddings, GELU, dropout), random
   weights, the same inputs: training tokens/s (forward, backward, AdamW step; fp32 and bf16
   autocast) and ``generate()`` tokens/s (greedy and 4 beams, a fixed number of new tokens).

Both models are the book run's shape (7.8M parameters). Inputs are random token ids: speed does
not depend on what the tokens are. Every sequence is forced to its full length (``min_new_tokens
= max_new_tokens``) so both sides generate the same number of tokens.

    python code/benchmarks/bench_seq2seq.py                  # everything, 1 thread
    python code/benchmarks/bench_seq2seq.py --only cache --batches 1
    python code/benchmarks/bench_seq2seq.py --json out.json  # also write the figures
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

from dgmbook.summarization.decoding import beam_search, greedy_search
from dgmbook.summarization.model import Seq2SeqConfig, Seq2SeqTransformer
from dgmbook.utils import autocast

CFG = Seq2SeqConfig(vocab_size=8000, d_model=256, n_heads=4, n_enc_layers=3, n_dec_layers=3,
                    d_ff=1024, max_len=512, dropout=0.1)
NEW_TOKENS = (16, 32, 64, 128, 256)


# The clock: the process's CPU time by default, which other programs on a shared machine do not
# inflate (with one thread it equals the wall time of an idle machine); "wall" for wall time.
CLOCK: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def seconds(fn: Callable[[], object], repeats: int = 3, warmup: bool = True) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed warm-up call if ``warmup``."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def paired_seconds(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` timed calls of ``a`` and of ``b``, alternated (after one warm-up
    call each) so that a change in the machine's load affects both alike."""
    a(), b()
    best_a = best_b = float("inf")
    for _ in range(repeats):
        best_a = min(best_a, seconds(a, 1, warmup=False))
        best_b = min(best_b, seconds(b, 1, warmup=False))
    return best_a, best_b


def random_batch(batch: int, src_len: int, tgt_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Right-padded sources of lengths between src_len/2 and src_len, and full targets:
    (src [B, S], tgt_in [B, T], tgt_out [B, T])."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, CFG.vocab_size, (batch, src_len), generator=g)
    lengths = torch.randint(src_len // 2, src_len + 1, (batch,), generator=g)
    src[torch.arange(src_len)[None, :] >= lengths[:, None]] = CFG.pad_id
    tgt = torch.randint(4, CFG.vocab_size, (batch, tgt_len + 1), generator=g)
    tgt[:, 0] = CFG.bos_id
    return src, tgt[:, :-1], tgt[:, 1:]


def ours() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(CFG)


def theirs():
    """A Hugging Face BART of the same shape, randomly initialised."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=CFG.vocab_size, d_model=CFG.d_model, max_position_embeddings=CFG.max_len,
        encoder_layers=CFG.n_enc_layers, decoder_layers=CFG.n_dec_layers,
        encoder_attention_heads=CFG.n_heads, decoder_attention_heads=CFG.n_heads,
        encoder_ffn_dim=CFG.d_ff, decoder_ffn_dim=CFG.d_ff, activation_function="gelu",
        dropout=CFG.dropout, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
        tie_word_embeddings=True, pad_token_id=CFG.pad_id, bos_token_id=CFG.bos_id,
        eos_token_id=CFG.eos_id, decoder_start_token_id=CFG.bos_id, forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(config)


def kv_cache_table(batches: tuple[int, ...], src_len: int = 200) -> list[dict]:
    model = ours().eval()
    rows = []
    for batch in batches:
        src, _, _ = random_batch(batch, src_len, 1)

        def encode() -> None:
            with torch.inference_mode():
                model.encode(src)

        encode_s = seconds(encode)  # paid once per generation, with or without the cache
        for n in NEW_TOKENS:
            t = {}
            for use_cache in (True, False):
                def run() -> None:
                    greedy_search(model, src, max_new_tokens=n, min_new_tokens=n, use_cache=use_cache)
                quick = use_cache or n * batch <= 64  # long uncached runs: timed once, no warm-up
                t[use_cache] = seconds(run, repeats=3 if quick else 1, warmup=quick)
            step = (t[True] - encode_s) / n  # a cached step, the search's own work included
            rows.append({"batch": batch, "new_tokens": n, "cached_s": t[True], "uncached_s": t[False],
                         "speedup": t[False] / t[True], "encode_s": encode_s, "cached_step_s": step})
            print(f"batch {batch:3d}  {n:4d} new tokens   cache {t[True] * 1e3:9.1f} ms   "
                  f"no cache {t[False] * 1e3:9.1f} ms   speed-up {t[False] / t[True]:5.1f}x   "
                  f"(encoder {encode_s * 1e3:.1f} ms, cached step {step * 1e3:.2f} ms)", flush=True)
    return rows


def training_tokens_per_second(batch: int = 32, src_len: int = 200, tgt_len: int = 36) -> list[dict]:
    src, tgt_in, tgt_out = random_batch(batch, src_len, tgt_len)
    tokens = int((src != CFG.pad_id).sum()) + tgt_out.numel()
    rows = []
    for bf16 in (False, True):
        steps = {name: train_step(model, src, tgt_in, tgt_out, bf16, hf=name == "hf_bart")
                 for name, model in (("ours", ours()), ("hf_bart", theirs()))}
        t_ours, t_theirs = paired_seconds(steps["ours"], steps["hf_bart"], repeats=5)
        row = {"dtype": "bf16" if bf16 else "fp32", "ours_tok_s": tokens / t_ours,
               "hf_tok_s": tokens / t_theirs, "ratio": t_theirs / t_ours}
        rows.append(row)
        print(f"training {row['dtype']}   ours {row['ours_tok_s']:8.0f} tok/s   "
              f"BART {row['hf_tok_s']:8.0f} tok/s   ours/theirs {row['ratio']:.2f}", flush=True)
    return rows


def train_step(model, src, tgt_in, tgt_out, bf16: bool, hf: bool) -> Callable[[], None]:
    """One AdamW step on the batch, the loss computed the same way for both models."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(bf16):
            if hf:
                logits = model(input_ids=src, attention_mask=src != CFG.pad_id,
                               decoder_input_ids=tgt_in).logits
            else:
                logits = model(src, tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def generate_tokens_per_second(batch: int = 16, src_len: int = 200, new_tokens: int = 64) -> list[dict]:
    src, _, _ = random_batch(batch, src_len, 1)
    mine, bart = ours().eval(), theirs().eval()
    rows = []
    for beams in (1, 4):
        def run_ours() -> None:
            if beams == 1:
                greedy_search(mine, src, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            else:
                beam_search(mine, src, num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

        def run_theirs() -> None:
            with torch.no_grad():
                bart.generate(input_ids=src, attention_mask=src != CFG.pad_id, num_beams=beams,
                              do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              length_penalty=1.0, early_stopping=False, no_repeat_ngram_size=0)

        t_ours, t_theirs = paired_seconds(run_ours, run_theirs, repeats=3)
        n = batch * new_tokens
        rows.append({"num_beams": beams, "ours_tok_s": n / t_ours, "hf_tok_s": n / t_theirs,
                     "ratio": t_theirs / t_ours})
        print(f"generate, {beams} beam(s), batch {batch}, {new_tokens} new tokens   "
              f"ours {n / t_ours:7.0f} tok/s   "
              f"BART {n / t_theirs:7.0f} tok/s   ours/theirs {t_theirs / t_ours:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("cache", "train", "generate"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu",
                        help="time with the process's CPU time (default; fair on a busy machine "
                             "with one thread) or the wall clock")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {args.clock} time")
    results = {}
    if args.only in (None, "cache"):
        results["kv_cache"] = kv_cache_table(tuple(args.batches))
    if args.only in (None, "train"):
        results["training"] = training_tokens_per_second()
    if args.only in (None, "generate"):
        results["generate"] = generate_tokens_per_second()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
