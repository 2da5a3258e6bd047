"""LoRA vs QLoRA-4 vs QLoRA-8 on CPU: peak RSS and real tokens/s, each trained alone in a fresh process.

Setup: bench/bench_train.py's (shape ``chatglm3-bench``: 4 layers, hidden 512, vocab 65024, 78.7M parameters;
LoRA r 8 / alpha 32 / dropout 0.1 on q/k/v; batch 4 packed rows of 769 tokens; gradient checkpointing; its
synthetic records), trained in fp32 on CPU. QLoRA quantizes the decoder's linear layers (bitsandbytes NF4 with
double quantization, or LLM.int8()); embeddings and lm_head (66.6M of the 78.7M parameters here) stay fp32, so
this model shows the speed cost of quantized layers more than their memory saving, which grows with depth
(see ``glmtune plan`` for ChatGLM3-6B)::

    python bench/bench_qlora.py                 # all three, 6 steps each (the first is not timed)
    python bench/bench_qlora.py --steps 10 --variant qlora4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import batches, synthetic_samples, train_step  # noqa: E402  (the training benchmark's setup)

VARIANTS = {"lora": None, "qlora4": 4, "qlora8": 8}


def build(bits: int | None, checkpointing: bool):
    import torch
    from glmtune import load_model
    from glmtune.methods import prepare
    from glmtune.methods.quantize import quantize_model

    model = load_model("chatglm3-bench", dtype="fp16", seed=0).float()  # as bench_train: fp16 weights, fp32 compute
    if bits:
        model = quantize_model(model, bits=bits, quant_type="nf4", double_quant=True, compute_dtype=torch.float32)
    model.config.use_cache = False
    model = prepare(model, "lora", {"r": 8, "alpha": 32, "dropout": 0.1, "target": "qkv"}).model
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def run_one(variant: str, steps: int, batch: int, checkpointing: bool) -> dict:
    import torch
    from glmtune.train.loss import find_lm_head

    model = build(VARIANTS[variant], checkpointing).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    samples = synthetic_samples(400, 65024)
    times, tokens = [], []
    for inputs, _ in zip(batches("packed", samples, batch), range(steps)):
        seconds, real = train_step(model, find_lm_head(model), opt, "packed", inputs)
        times.append(seconds)
        tokens.append(real)
    timed = slice(1, None) if steps > 1 else slice(None)
    return {"variant": variant, "median_s": statistics.median(times[timed]),
            "tokens_per_s": sum(tokens[timed]) / sum(times[timed]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=tuple(VARIANTS), help="run one variant in this process")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_one(args.variant, args.steps, args.batch, args.checkpointing)), flush=True)
        return 0
    rows = []
    for variant in VARIANTS:  # each alone in a fresh process: its own peak RSS
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--batch", str(args.batch)]
        if not args.checkpointing:
            cmd.append("--no-checkpointing")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'variant':8} {'peak RSS':>10} {'tokens/s':>9} {'step (median)':>14}  vs LoRA")
    for r in rows:
        print(f"{r['variant']:8} {r['peak_rss_mib']:8.0f} MiB {r['tokens_per_s']:9.0f} {r['median_s']:12.2f} s  "
              f"RSS x{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}, speed x{r['tokens_per_s'] / base['tokens_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
