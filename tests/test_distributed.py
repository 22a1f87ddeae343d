"""Data-parallel training (dgmbook.distributed): two CPU processes (gloo, 127.0.0.1)
launched by ``torchrun`` or ``accelerate launch`` train the same tiny models as one
process at the same global batch, and deal independent jobs to the processes.

The test launches this file as a script under ``torchrun --nproc_per_node 2`` and under
``accelerate launch --num_processes 2``; each process runs :func:`worker`, which
fine-tunes a tiny random T5 through :func:`dgmbook.summarization.bert2bert.train`,
trains on a time budget, then goes through ``python -m dgmbook full`` for a tiny
from-scratch run (so that the results file is the command line's). The test compares
the curves with the same runs in one process, here: fp32 throughout, the only
differences are the order of floating-point sums (per-process shares, gradient
all-reduce) and the padding of each share, so the losses agree to :data:`TOLERANCE`.
Both launches together take 35-42 s on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from dgmbook import continual as C
from dgmbook import device as devices
from dgmbook import distributed
from dgmbook.summarization import model as seq2seq
from dgmbook.summarization import scratch as S

TOLERANCE = 1e-5  # absolute, on cross-entropies near 6 nats (fp32; seen: 7e-7)
WORLD = 2


def tiny_scratch(**changes) -> S.TrainConfig:
    """8 steps of 16 on 96 DialogSum dialogues, a 1+1-layer 32-wide model, fp32, no
    dropout (each process draws its own dropout masks: with dropout the curves differ by
    noise)."""
    tiny = seq2seq.Seq2SeqConfig(vocab_size=500, d_model=32, n_heads=2, n_enc_layers=1,
                                 n_dec_layers=1, d_ff=64, max_len=64, dropout=0.0)
    cfg = dict(train_examples=96, val_examples=24, model=tiny, max_source_len=64,
               max_target_len=16, max_steps=8, batch_size=16, warmup_steps=2,
               bf16=False)
    return S.TrainConfig(**{**cfg, **changes})


def tiny_finetune():
    """A tiny random T5 (the bert2bert tests' tiny_t5): 48 examples, batches of 8."""
    from test_summarization_bert2bert import EXAMPLES, tiny_t5

    from dgmbook.summarization import bert2bert as P

    model, tokenizer = tiny_t5()
    cfg = P.FinetuneConfig(model="tiny-t5", max_examples=48, batch_size=8,
                           eval_every=16, n_val=4, bf16=False, keep_weights=False,
                           lr=1e-3)
    return P.train(cfg, model, tokenizer, EXAMPLES * 12, EXAMPLES, show_progress=False)


def scratch_experiment(progress: bool = True):
    """A stand-in for a registered full experiment: ``run(progress) -> (config,
    metrics)``."""
    cfg = tiny_scratch()
    result = S.train(cfg, show_progress=progress)
    metrics = {k: result[k] for k in ("curves", "steps", "examples_seen")}
    return asdict(cfg), {**metrics, "world": distributed.world_size()}


def tiny_full_runs() -> dict[str, list[str]]:
    """Both registered full runs end to end at a tiny scale (their configurations, the
    BERT2BERT model and the test-set evaluations replaced): the names of the metrics
    each process returns."""
    from test_summarization_bert2bert import EXAMPLES, tiny_t5

    from dgmbook.summarization import bert2bert as P
    from dgmbook.summarization import evaluation
    from dgmbook.summarization.decoding import DecodeConfig

    def evaluate(system_for, *args, **kwargs):  # decode one document
        summarize = system_for(DecodeConfig(max_new_tokens=4))
        return {"summaries": summarize(["Hello there."])}

    S.full_config = tiny_scratch
    P.full_config = lambda: P.FinetuneConfig(model="tiny-t5", max_examples=16,
                                             batch_size=8, eval_every=16, n_val=4)
    P.load_model = lambda name, speaker_tags=True: tiny_t5()
    P.load_dialogsum = lambda split: EXAMPLES * 4
    evaluation.full_run_evaluation = evaluate
    return {name: sorted(module.full_experiment(progress=False)[1])
            for name, module in (("scratch", S), ("bert2bert", P))}


def tiny_continual() -> dict:
    """The continual-learning full experiment (independent runs, dealt to the processes)
    on test_continual's tiny runs: 2 seeds x 4 strategies, 3 tasks of a 16-unit MLP."""
    import test_continual

    test_continual._tiny_full(pytest.MonkeyPatch(), seeds=(0, 1), epochs=(1,))
    return C.full_experiment(progress=False)[1]


def worker(out: Path) -> None:
    from dgmbook import cli, recorded

    rank = int(os.environ["RANK"])
    finetune = tiny_finetune()  # joins the launcher's group (train calls setup)
    # a time budget: every process must stop at the same step
    timed = S.train(tiny_scratch(max_steps=None, minutes=0.03, train_examples=400))
    # independent jobs (the VAE, GAN and continual-learning full runs): dealt, gathered
    dealt = list(distributed.deal(5))
    gathered = distributed.collect({i: [i, rank] for i in dealt}, 5)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "finetune": finetune["curves"], "timed_steps": timed["steps"],
        "world": distributed.world_size(), "full_runs": tiny_full_runs(),
        "dealt": dealt, "gathered": gathered, "continual": tiny_continual(),
    }))
    recorded.RESULTS_DIR = out  # the results file goes to the test's folder
    cli.EXPERIMENTS["tiny-distributed"] = f"{__name__}:scratch_experiment"
    assert cli.main(["full", "tiny-distributed"]) == 0
    assert not torch.distributed.is_initialized()  # the command line left the group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launcher: str, script: str, *args: str) -> list[str]:
    """Either launcher, on the loopback interface: ``torchrun`` or ``accelerate launch``
    (which, with no GPU, needs ``--multi_gpu`` to start several processes)."""
    port = f"{free_port()}"
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                f"--nproc_per_node={WORLD}", "--master_addr", "127.0.0.1",
                "--master_port", port, script, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", f"{WORLD}", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, script, *args]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_as_one(tmp_path, launcher, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DGMBOOK_DEVICE": "cpu",
           "DGMBOOK_PROGRESS": "0"}
    command = launch_command(launcher, __file__, str(tmp_path))
    t0 = time.perf_counter()
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True,
                             timeout=150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the launched processes hung: {e.stdout!r} {e.stderr!r}")
    launched = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"{WORLD} processes ({launcher}): {launched:.1f} s")

    # exactly one results file, from rank 0, recording the two-process run
    names = sorted(p.name for p in tmp_path.iterdir())
    results = [n for n in names if not n.startswith("rank")]
    assert results == ["tiny-distributed.json"], results
    recorded = json.loads((tmp_path / "tiny-distributed.json").read_text())
    two = recorded["metrics"]
    assert two["world"] == WORLD and two["steps"] == 8

    # the same run in this one process: the same curves
    one = S.train(tiny_scratch())
    assert two["examples_seen"] == one["examples_seen"] == 8 * 16
    assert two["curves"]["lr"] == one["curves"]["lr"]
    for key in ("train_loss", "val_loss"):
        diff = max(abs(a - b) for a, b in zip(two["curves"][key], one["curves"][key]))
        assert len(two["curves"][key]) == len(one["curves"][key])
        assert diff < TOLERANCE, (key, diff, two["curves"][key], one["curves"][key])
        print(f"from scratch, {key}: largest difference {diff:.2e}")

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["world"] for r in ranks] == [WORLD] * WORLD
    assert ranks[0]["finetune"] == ranks[1]["finetune"]  # reduced: every process agrees
    single = tiny_finetune()["curves"]
    two_ft = ranks[0]["finetune"]
    assert two_ft["examples"] == single["examples"]
    for key in ("train_loss", "val_loss"):
        pairs = [(a, b) for a, b in zip(two_ft[key], single[key]) if a is not None]
        diff = max(abs(a - b) for a, b in pairs)
        assert len(pairs) >= 3 and diff < TOLERANCE, (key, pairs)
        print(f"fine-tuning, {key}: largest difference {diff:.2e}")
    # the real full runs: rank 0 alone evaluates
    full = ranks[0]["full_runs"]
    assert {"source_use", "final_val_loss", "summaries"} <= set(full["scratch"])
    assert {"curves", "summaries"} <= set(full["bert2bert"])
    assert ranks[1]["full_runs"] == {"scratch": [], "bert2bert": []}
    # independent jobs: each runs on one process, rank 0 has every result in order
    assert (ranks[0]["dealt"], ranks[1]["dealt"]) == ([0, 2, 4], [1, 3])
    assert ranks[0]["gathered"] == [[i, i % WORLD] for i in range(5)]
    assert ranks[1]["gathered"] is None
    # ... and a full experiment of independent runs gives one process's results
    import test_continual

    test_continual._tiny_full(monkeypatch, seeds=(0, 1), epochs=(1,))
    one_cl = C.full_experiment(progress=False)[1]
    assert ranks[1]["continual"] == {}
    for name, m in one_cl["epochs1"].items():
        two_cl = ranks[0]["continual"]["epochs1"][name]
        for key in ("final_average_accuracy", "forgetting"):
            assert two_cl[key]["values"] == pytest.approx(m[key]["values"], abs=1e-6)
    # a time budget ends on every process at the same step
    assert ranks[0]["timed_steps"] == ranks[1]["timed_steps"] > 0


def test_one_process_wraps_nothing():
    model = torch.nn.Linear(2, 2)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.wrap(model) is model
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.all_sum(1.5, 2) == [1.5, 2] and distributed.all_max(3.0) == 3.0
    assert distributed.token_weight(7) == (1.0, 7)


def test_device_setting(monkeypatch):
    monkeypatch.delenv(devices.ENV, raising=False)
    assert devices.resolve() == "cpu"
    monkeypatch.setenv(devices.ENV, " CPU ")
    assert devices.resolve() == "cpu"
    monkeypatch.setenv(devices.ENV, "auto")
    assert devices.resolve() == ("cuda:0" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.resolve("cuda") == "cuda:3"  # one GPU per launched process
    assert devices.resolve("cuda:1") == "cuda:1"
    assert devices.resolve("cpu") == "cpu"
    with pytest.raises(RuntimeError):
        devices.resolve("gpu0")
    assert devices.autocast_dtype("cpu") == torch.bfloat16
    assert devices.autocast_dtype(torch.device("cpu")) == torch.bfloat16
    from dgmbook.utils import autocast

    a = torch.ones(2, 2)
    for device in ("cpu", torch.device("cpu")):
        with autocast(True, device):
            assert (a @ a).dtype == torch.bfloat16
    with autocast(False, "cpu"):
        assert (a @ a).dtype == torch.float32


if __name__ == "__main__":  # one process of the launched group
    worker(Path(sys.argv[1]))
