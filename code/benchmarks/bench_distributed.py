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

    ... bench_distributed.py --runs 4 --procs 1 2

times instead ``--runs`` independent runs of the continual-learning full experiment (one
epoch a task, full rehearsal left out), dealt to the processes as ``python -m dgmbook
full`` deals them (:func:`distributed.deal`, :func:`distributed.collect`), and reports
runs per minute from the first run's start to rank 0 holding every result.

Idle, on the 2-core AMD EPYC machine (2026-12-06): the summarizer 133.5 examples/s on 1
process and 204.7 on 2 (1.53x); 4 independent runs 9.15 runs/min on 1 process, 17.21 on 2
(1.88x), and 12.47 on 1 process with 2 threads (``--threads 2 --procs 1``): dealing the
runs to 2 single-thread processes is 1.38x one process on both cores.
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


def independent_runs(n: int) -> list:
    """The first ``n`` one-epoch runs of the continual-learning full experiment, full
    rehearsal left out (4-9 s each on the 2-core machine, alone)."""
    from dgmbook import continual

    cfgs = [c for name, c in continual.full_configs()
            if c.epochs == 1 and name != "full_rehearsal"]
    if not 0 < n <= len(cfgs):
        raise SystemExit(f"--runs: 1 to {len(cfgs)}")
    return cfgs[:n]


def runs_worker(args) -> None:
    """One process of a launch: its share of ``--runs`` runs, then the gather."""
    from dgmbook import continual

    torch.set_num_threads(args.threads)
    distributed.setup(devices.resolve())
    cfgs = independent_runs(args.runs)
    t0 = time.perf_counter()
    mine = {i: continual.run(cfgs[i])["R"] for i in distributed.deal(len(cfgs))}
    done = distributed.collect(mine, len(cfgs))
    wall = time.perf_counter() - t0
    if done is not None:
        Path(args.out).write_text(json.dumps({
            "runs_per_minute": 60 * len(done) / wall, "world": distributed.world_size(),
            "wall": wall}))
    distributed.teardown()


def worker(args) -> None:
    """One process of a launch: time ``warmup`` steps, then ``warmup + steps``."""
    if args.runs:
        return runs_worker(args)
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
                   "--batch", str(args.batch), "--threads", str(args.threads),
                   "--runs", str(args.runs)]
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
    ap.add_argument("--runs", type=int, default=0,
                    help="time this many independent runs instead (dealt to the processes)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.runs:
        independent_runs(args.runs)  # a bad --runs fails here, not in every process
        what = f"{args.runs} independent continual-learning runs"
        key, label, width, wall = "runs_per_minute", "runs/min", 9, "runs wall s"
    else:
        what = f"global batch {args.batch}, {args.steps} timed steps"
        key, label, width, wall = "examples_per_second", "examples/s", 11, "launch wall s"
    print(f"torch {torch.__version__}, device {devices.resolve()}, {args.threads} "
          f"thread(s) per process, {what}")
    print(f"{'processes':>9} {label:>{width}} {'ratio':>6} {wall:>14}")
    base = None
    for procs in args.procs:
        r = launch(procs, args)
        base = base or r[key]
        print(f"{r['world']:>9} {r[key]:>{width}.2f} {r[key] / base:>6.2f} "
              f"{r['wall']:>14.1f}", flush=True)

if __name__ == "__main__":
    main()
