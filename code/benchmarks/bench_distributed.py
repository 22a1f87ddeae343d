"""Training examples per second of the from-scratch summarizer on 1 and on N processes
(data-parallel, :mod:`dgmbook.distributed`), at the same global batch.

    DGMBOOK_DATA=../shared/data python code/benchmarks/bench_distributed.py --procs 1 2

Each count is one ``torchrun --nproc_per_node N`` launch of this file (gloo on CPUs, one
thread per process; NCCL with ``DGMBOOK_DEVICE=cuda``, one GPU per process). It trains a
small model (d 128, 2+2 layers, inputs cut to 128 tokens) for ``--steps`` steps of
``--batch`` dialogues and reports the examples per second of the training steps
(validation excluded) and the ratio to one process. The first ``--warmup`` steps are
trained but not timed.

On the project's 2-core machine, nice'd while a book build kept both cores busy (load
2.3), the defaults gave 120.5 examples/s on 1 process and 134.8 on 2 (1.12x); a shorter
trial (4 timed steps) gave 101.8 and 160.5 (1.58x). Two processes on two cores can at
best double one single-threaded process; on an idle machine, or one GPU per process, the
ratio is the figure to watch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dgmbook import device as devices
from dgmbook import distributed
from dgmbook.summarization import model as seq2seq
from dgmbook.summarization import scratch as S


def config(steps: int, batch: int) -> S.TrainConfig:
    small = seq2seq.Seq2SeqConfig(vocab_size=2000, d_model=128, n_heads=4,
                                  n_enc_layers=2, n_dec_layers=2, d_ff=512, max_len=128,
                                  dropout=0.0)
    return S.TrainConfig(train_examples=2000, val_examples=32, model=small,
                         max_source_len=128, max_target_len=32, max_steps=steps,
                         batch_size=batch, warmup_steps=10, device=devices.resolve())


def worker(args) -> None:
    """One process of a launch: time ``warmup`` steps, then ``warmup + steps``."""
    torch.set_num_threads(args.threads)
    times = []
    for steps in (args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        result = S.train(config(steps, args.batch), show_progress=False)
        train_s = result["train_tokens"] / result["tokens_per_second"]
        times.append((train_s, result["examples_seen"], time.perf_counter() - t0))
    if distributed.is_main():
        (seconds0, seen0, _), (seconds1, seen1, wall) = times
        Path(args.out).write_text(json.dumps({
            "examples_per_second": (seen1 - seen0) / (seconds1 - seconds0),
            "world": distributed.world_size(), "wall": wall,
        }))
    distributed.teardown()


def launch(procs: int, args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                   f"--nproc_per_node={procs}", "--master_addr", "127.0.0.1",
                   f"--master_port={port}", __file__, "--worker", "--out", str(out),
                   "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--batch", str(args.batch), "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "DGMBOOK_PROGRESS": "0"}
        subprocess.run(command, env=env, check=True)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32, help="the global batch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"torch {torch.__version__}, device {devices.resolve()}, {args.threads} "
          f"thread(s) per process, global batch {args.batch}, {args.steps} timed steps")
    print(f"{'processes':>9} {'examples/s':>11} {'ratio':>6} {'launch wall s':>14}")
    base = None
    for procs in args.procs:
        r = launch(procs, args)
        base = base or r["examples_per_second"]
        print(f"{r['world']:>9} {r['examples_per_second']:>11.1f} "
              f"{r['examples_per_second'] / base:>6.2f} {r['wall']:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
