"""Speed of the VAE chapter: seconds per 10,000 training iterations and the chapter's cold and
warm execution times.

    DGMBOOK_DATA=../shared/data python code/benchmarks/bench_vae.py            # everything
    DGMBOOK_DATA=../shared/data python code/benchmarks/bench_vae.py --no-chapter

What it measures (z_dim 64, batch 100, the reference model):
  * ours: dgmbook.vae.train (whole-tensor data, dynamic binarization by one uniform draw, bf16
    autocast, fused Adam) on 1 and 2 threads, and two single-threaded runs side by side (what the
    chapter does: "latency" is how long each run takes, "per run" the wall time divided by the
    number of runs), timed over --iters iterations and scaled to 10,000;
  * course: the course's loop (torchvision MNIST + ToTensor DataLoader, torch.bernoulli, the
    one-hot labels it builds every step, fp32, per-parameter Adam), timed the same way;
  * the chapter executed as the book build does, once with an empty run cache (cold) and once
    more with that cache (warm).

Wall-clock times are inflated when other jobs share the cores; CPU seconds are printed beside
them, and the load average before and after, to judge how much.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dgmbook import vae
from dgmbook.data import data_root, load_image_dataset

ROOT = Path(__file__).resolve().parents[2]


def _cpu() -> float:
    """CPU seconds of this process and of its waited-for descendants."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _report(name: str, wall: float, cpu: float, iters: int) -> None:
    k = 10_000 / iters
    print(f"{name:58s} {wall * k:7.1f} s wall  {cpu * k:7.1f} s CPU  per 10,000 iterations", flush=True)


def bench_ours(iters: int, threads: int, bf16: bool = True) -> None:
    x_train = load_image_dataset("MNIST", train=True)[0].reshape(-1, 784)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    vae.train(vae.VAEConfig(iters=20, bf16=bf16), x_train)  # warm-up (oneDNN kernels)
    t, c = time.perf_counter(), _cpu()
    vae.train(vae.VAEConfig(iters=iters, bf16=bf16), x_train)
    _report(f"ours, {threads} thread(s), {'bf16' if bf16 else 'fp32'}", time.perf_counter() - t, _cpu() - c, iters)
    torch.set_num_threads(old)


def bench_ours_parallel(iters: int, workers: int = 2) -> None:
    """`workers` single-threaded runs side by side (vae.run_many, as the chapter trains), less the
    start-up of the worker processes (importing torch, reading MNIST), timed with 1 iteration."""
    def timed(n: int) -> tuple[float, float]:
        cfgs = [vae.VAEConfig(iters=n, seed=s, test_repeats=0, eval_repeats=0) for s in range(workers)]
        t, c = time.perf_counter(), _cpu()
        vae.run_many(cfgs, workers=workers)
        return time.perf_counter() - t, _cpu() - c

    wall0, cpu0 = timed(1)
    wall, cpu = timed(iters)
    print(f"(worker start-up: {wall0:.1f} s wall, not counted below)")
    _report(f"ours, {workers} single-thread runs side by side, latency", wall - wall0, (cpu - cpu0) / workers, iters)
    _report(f"ours, {workers} single-thread runs side by side, per run", (wall - wall0) / workers,
            (cpu - cpu0) / workers, iters)


def bench_course(iters: int, threads: int) -> None:
    """The course's training loop (CS236 HW2 codebase/train.py with run_vae.py's VAE)."""
    import torchvision
    from torchvision import transforms

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    data = torchvision.datasets.MNIST(str(data_root()), train=True, download=False,
                                      transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(data, batch_size=100, shuffle=True)
    torch.manual_seed(0)
    model = vae.VAE(vae.VAEConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # the default: per-parameter on CPU
    t, c = time.perf_counter(), _cpu()
    i = 0
    while i < iters:
        for xu, yu in loader:
            i += 1
            opt.zero_grad()
            xu = torch.bernoulli(xu.reshape(xu.size(0), -1))
            yu = yu.new(np.eye(10)[yu]).float()
            nelbo, kl, rec = model.negative_elbo_bound(xu)
            nelbo.backward()
            opt.step()
            _ = "{:.2e}".format(nelbo)  # the course's progress-bar postfix
            if i == iters:
                break
    _report(f"course (ToTensor DataLoader, fp32, for-loop Adam), {threads} thr", time.perf_counter() - t,
            _cpu() - c, iters)
    torch.set_num_threads(old)


def bench_chapter() -> None:
    """Execute book/vae.md as the build does: cold (empty run cache), then warm."""
    code = ("import jupytext, nbclient; nb = jupytext.read('vae.md'); "
            "nbclient.NotebookClient(nb, timeout=900, kernel_name='python3').execute()")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, DGMBOOK_CACHE=cache)
        env.setdefault("DGMBOOK_DATA", str(data_root()))
        for label in ("cold", "warm"):
            t, c = time.perf_counter(), _cpu()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT / "book", env=env, check=True)
            print(f"chapter book/vae.md, {label:4s}: {time.perf_counter() - t:7.1f} s wall  "
                  f"{_cpu() - c:7.1f} s CPU", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=2000, help="iterations timed per configuration")
    p.add_argument("--no-course", action="store_true")
    p.add_argument("--no-chapter", action="store_true")
    p.add_argument("--only-course", action="store_true", help="time only the course's loop (1 thread)")
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.only_course:
        bench_course(args.iters, threads=1)
        return
    bench_ours(args.iters, threads=2)
    bench_ours(args.iters, threads=1)
    bench_ours(args.iters, threads=1, bf16=False)
    bench_ours_parallel(args.iters)
    if not args.no_course:
        bench_course(args.iters, threads=2)
        bench_course(args.iters, threads=1)
    if not args.no_chapter:
        bench_chapter()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
