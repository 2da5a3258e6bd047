"""FSDP2 on CPU: full fine-tuning of the 78.7M benchmark model in 1 process, 2 processes with FSDP2, and
2 processes with DDP; per-process peak RSS and real tokens/s through ``glmtune train``'s own code path.

Setup: shape ``chatglm3-bench`` (as bench/bench_train.py: 4 layers, hidden 512, vocab 65024; 78.7M
parameters) saved as a model folder (so the first rank reads it and FSDP broadcasts the shards), trained
in fp32 with AdamW (full fine-tuning: weights + gradients + two moments = 16 bytes per parameter, 1.26 GB
unsharded), gradient checkpointing on, the same global batch of 4 sequences (1 x 4 or 2 x 2), 200 synthetic
records of ~100-token prompts and ~150-token answers, ChatGLM3's tokenizer (../shared/fixtures or
--tokenizer). Peak RSS is each process's ``ru_maxrss`` at the end of training (it includes Python, torch and
the data); tokens/s is the median of the logged real (non-padding) tokens per second of the whole launch.

    python bench/bench_fsdp.py                     # 1 process, 2 x FSDP2, 2 x DDP; 8 steps each
    python bench/bench_fsdp.py --steps 12 --modes fsdp
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"single": (1, False), "fsdp": (2, True), "ddp": (2, False)}


def write_inputs(folder: Path, tokenizer: Path, records: int = 200) -> dict:
    """The model folder and the data file; returns the config every mode trains (batch set per mode)."""
    from glmtune.models import load_model, save_model

    save_model(load_model("chatglm3-bench", dtype="fp32", seed=0), folder / "model")
    rng = random.Random(0)
    words = [f"w{n}" for n in range(3000)]
    with open(folder / "train.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(records):
            prompt, answer = " ".join(rng.choices(words, k=50)), " ".join(rng.choices(words, k=75))
            fh.write(json.dumps({"conversations": [{"role": "user", "content": prompt},
                                                   {"role": "assistant", "content": answer}]}) + "\n")
    return {
        "model": {"path": str(folder / "model"), "tokenizer": str(tokenizer), "device": "cpu"},
        "data": {"train_file": "train.jsonl", "data_dir": str(folder), "max_input_length": 256,
                 "max_output_length": 512, "cache": False, "packing": False},
        "method": {"name": "full"},
        "training": {"learning_rate": 1e-5, "logging_steps": 1, "save_steps": 0, "tensorboard": False,
                     "gradient_checkpointing": True},
        "evaluation": {"strategy": "no"},
    }


def worker(spec: dict) -> None:
    """One process of a launch: train, then write this process's peak RSS."""
    from transformers import TrainerCallback

    from glmtune.config import load_config
    from glmtune.train import run_training

    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["out"])

    class PeakRss(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            (out.parent / f"{out.name}-rss-{rank}.json").write_text(json.dumps(peak_kib * 1024))

    cfg = dict(spec["config"], output={"dir": str(out), "plots": False})
    cfg["training"] = dict(cfg["training"], max_steps=spec["steps"], batch_size=4 // spec["world"],
                           fsdp={"enabled": spec["fsdp"]})
    run_training(load_config(cfg), quiet=True, callbacks=[PeakRss()])


def launch(mode: str, config: dict, folder: Path, steps: int) -> dict:
    world, fsdp = MODES[mode]
    out = folder / mode
    spec = json.dumps({"out": str(out), "world": world, "fsdp": fsdp, "steps": steps, "config": config})
    if world == 1:
        cmd = [sys.executable, __file__, "--worker", spec]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    speeds = [e["tokens_per_second"] for e in log if "tokens_per_second" in e][1:]  # step 1 warms up
    rss = [json.loads((folder / f"{mode}-rss-{r}.json").read_text()) for r in range(world)]
    return {"mode": mode, "processes": world, "tokens_per_s": statistics.median(speeds),
            "peak_rss_gib": [round(b / 2**30, 2) for b in rss], "losses": [e["loss"] for e in log if "loss" in e]}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--modes", default="single,fsdp,ddp")
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "fixtures" / "chatglm3-tiny"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as tmp:
        folder = Path(tmp)
        config = write_inputs(folder, Path(args.tokenizer))
        print(f"{'mode':8} {'procs':>5} {'tokens/s':>9}  peak RSS per process (GiB)  losses")
        for mode in args.modes.split(","):
            r = launch(mode, config, folder, args.steps)
            print(f"{r['mode']:8} {r['processes']:>5} {r['tokens_per_s']:>9.0f}  {str(r['peak_rss_gib']):27} "
                  f"{' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)


if __name__ == "__main__":
    main()
