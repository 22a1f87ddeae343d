"""Command line for long "full" experiments and data checks.

    python -m dgmbook list                 # the registered full experiments
    python -m dgmbook full NAME            # run one; writes code/dgmbook/results/NAME.json
    python -m dgmbook data                 # verify every registered data file under the data root
    python -m dgmbook pdf                  # the built book as one PDF: _build/pdf/book.pdf
    python -m dgmbook publish              # the publish folder: _build/publish/ (see dgmbook.publish)

A full experiment is a function ``run(progress: bool) -> (config: dict, metrics: dict)`` registered
in :data:`EXPERIMENTS` as ``"module:function"``; the results file records its configuration,
metrics, the code revision, the hardware and the wall time.

A full run trains on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`: ``cpu`` by default,
``auto``, ``cuda`` ...) and runs unchanged on several processes, one per GPU
(:mod:`dgmbook.distributed`)::

    DGMBOOK_DEVICE=auto torchrun --nproc_per_node 4 -m dgmbook full NAME
    DGMBOOK_DEVICE=auto accelerate launch --num_processes 4 -m dgmbook full NAME

Rank 0 alone prints progress, evaluates and writes the results file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from dgmbook import data, device, distributed, recorded

# name -> "module:function"; chapters with long runs add one line here.
EXPERIMENTS: dict[str, str] = {
    "continual-learning": "dgmbook.continual:full_experiment",
    "summarization-scratch": "dgmbook.summarization.scratch:full_experiment",
    "summarization-pretrained": "dgmbook.summarization.bert2bert:full_experiment",
    "vae": "dgmbook.vae:full_experiment",
    "gans": "dgmbook.gan_scores:full_experiment",
}


def _resolve(spec: str):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def cmd_list(_args) -> int:
    if not EXPERIMENTS:
        print("no full experiments are registered yet")
    for name, spec in sorted(EXPERIMENTS.items()):
        print(f"{name:30s} {spec}")
    return 0


def cmd_full(args) -> int:
    if args.name not in EXPERIMENTS:
        print(f"unknown experiment {args.name!r}; `python -m dgmbook list` shows them", file=sys.stderr)
        return 2
    revision = recorded.code_revision()  # the code the run starts with, not whatever is checked out at its end
    start = time.perf_counter()
    # under a launcher, join its group now: every experiment then knows its rank
    distributed.setup(device.resolve())
    try:
        config, metrics = _resolve(EXPERIMENTS[args.name])(progress=True)
    finally:
        main_process = distributed.is_main()
        distributed.teardown()
    if not main_process:  # torchrun/accelerate launch: rank 0 alone records the run
        return 0
    path = recorded.write_results(args.name, config, metrics, time.perf_counter() - start,
                                  revision=revision)
    print(f"wrote {path}")
    return 0


def cmd_data(_args) -> int:
    failures = 0
    print(f"data root: {data.data_root()} ({'read-only' if data.root_is_read_only() else 'cache'})")
    for ds in data.REGISTRY.values():
        for f in ds.files:
            try:
                data.dataset_file(ds.name, f.relpath, download=False)
                print(f"ok       {f.relpath}")
            except (data.DatasetNotFoundError, data.ChecksumError) as e:
                failures += 1
                print(f"PROBLEM  {e}")
    return 1 if failures else 0


def cmd_publish(args) -> int:
    from dgmbook import publish

    return publish.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dgmbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the full experiments").set_defaults(func=cmd_list)
    full = sub.add_parser("full", help="run a full experiment and record its results")
    full.add_argument("name")
    full.set_defaults(func=cmd_full)
    sub.add_parser("data", help="verify the data files under the data root").set_defaults(func=cmd_data)
    pdf = sub.add_parser("pdf", help="print the built book to one PDF (_build/pdf/book.pdf)")
    pdf.add_argument("--root", default=".", help="the book's root (where _config.yml is)")
    pdf.set_defaults(func=cmd_publish)
    pub = sub.add_parser("publish", help="assemble the publish folder from the built book")
    pub.add_argument("--root", default=".", help="the book's root (where _config.yml is)")
    pub.add_argument("--out", help="the folder to write (default: ROOT/_build/publish)")
    pub.add_argument("--cache", help="the run cache the build filled (default: $DGMBOOK_CACHE)")
    pub.set_defaults(func=cmd_publish)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
