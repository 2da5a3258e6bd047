"""DeepSpeed on CPU with THUDM's official configs, unchanged: full fine-tuning of the 78.7M benchmark model in
1 process without DeepSpeed, 2 processes with ds_zero_2.json, 2 processes with ds_zero_3.json (AdamW on the CPU
through DeepSpeed's cpu_adam, parameters and optimizer state offloaded), and 1 process with ds_zero_3.json;
per-process peak RSS and real tokens/s through ``glmtune train``'s own code path.

Same setup, worker and figures as bench/bench_fsdp.py (global batch 4 = 1 x 4 or 2 x 2, fp32, gradient
checkpointing, ChatGLM3's tokenizer from ../shared/fixtures or --tokenizer).

    python bench/bench_deepspeed.py                 # single, zero2, zero3, zero3-1, zero3-plain; 8 steps each
    python bench/bench_deepspeed.py --steps 4 --modes zero3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fsdp  # noqa: E402 - the FSDP benchmark's setup, worker and launcher, reused

OFFICIAL = bench_fsdp.ROOT / "examples" / "official"
# mode -> (processes, DeepSpeed config or None)
MODES = {"single": (1, None), "zero2": (2, "ds_zero_2.json"), "zero3": (2, "ds_zero_3.json"),
         "zero3-1": (1, "ds_zero_3.json"), "zero3-plain": (2, "zero3-plain.json")}
# ZeRO-3 without the official file's CPU offload and DeepSpeed optimizer (the Trainer's torch AdamW): on a CPU-only
# machine "offloading to the CPU" only adds copies), and releasing every gathered weight right after use (the
# official file keeps up to 1e9 parameters gathered, i.e. this whole model): the partitioning alone.
PLAIN = {"zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1e7, "stage3_max_reuse_distance": 0,
                               "stage3_prefetch_bucket_size": 0, "stage3_param_persistence_threshold": 0},
         "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--tokenizer", default=str(bench_fsdp.ROOT.parent / "shared" / "fixtures" / "chatglm3-tiny"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deepspeed-") as tmp:
        folder = Path(tmp)
        base = bench_fsdp.write_inputs(folder, Path(args.tokenizer))
        (folder / "zero3-plain.json").write_text(json.dumps(PLAIN))
        print(f"{'mode':8} {'procs':>5} {'tokens/s':>9}  peak RSS per process (GiB)  losses")
        for mode in args.modes.split(","):
            world, ds = MODES[mode]
            bench_fsdp.MODES[mode] = (world, False)  # bench_fsdp's launcher reads the process count from its table
            where = folder if ds == "zero3-plain.json" else OFFICIAL
            config = dict(base, training=dict(base["training"], deepspeed=str(where / ds) if ds else None))
            r = bench_fsdp.launch(mode, config, folder, args.steps)
            print(f"{r['mode']:8} {r['processes']:>5} {r['tokens_per_s']:>9.0f}  {str(r['peak_rss_gib']):27} "
                  f"{' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)


if __name__ == "__main__":
    main()
