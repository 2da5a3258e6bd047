"""Chat generation speed: time to first token and generated tokens/s, with and without an unmerged LoRA.

Runs glmtune's own generation loop (the one ``glmtune chat`` and ``serve``
use) on a randomly initialised model of a named shape, greedy, without stop
tokens so every run generates exactly ``--new-tokens`` tokens. Prints one
line per variant (median of ``--repeats`` runs):

    .venv/bin/python bench/bench_chat.py --shape chatglm3-bench --prompt-tokens 256 --new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def lora_model(shape: str, r: int, target: str):
    """The shape with a LoRA adapter whose B is non-zero (so the adapter path really computes)."""
    from glmtune import load_model
    from glmtune.methods import prepare

    prepared = prepare(load_model(shape, dtype="fp32"), "lora", {"r": r, "alpha": 2 * r, "target": target})
    with torch.no_grad():
        for name, param in prepared.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    prepared.model.eval()
    return prepared.model


def time_run(model, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, generated tokens/s after it)."""
    from glmtune.infer import generate_stream

    start = time.perf_counter()
    first = None
    count = 0
    for _ in generate_stream(model, prompt, max_new_tokens=new_tokens):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first) if count > 1 else float("nan")


def bench(name: str, model, prompt: list[int], args) -> None:
    time_run(model, prompt[:16], 4)  # warm-up: allocator, kernels
    runs = [time_run(model, prompt, args.new_tokens) for _ in range(args.repeats)]
    ttft = statistics.median(r[0] for r in runs)
    tps = statistics.median(r[1] for r in runs)
    print(f"{name:<28} ttft {ttft * 1000:8.1f} ms   decode {tps:7.1f} tokens/s", flush=True)


def main() -> None:
    from glmtune import load_model
    from glmtune.methods import merge_adapter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="chatglm3-bench")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-target", default="all-linear")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    # Ordinary-text ids, after [gMASK] sop <|user|>; the values do not change the cost.
    prompt = [64790, 64792, 64795] + torch.randint(100, 60000, (args.prompt_tokens - 4,), generator=gen).tolist() + [64796]
    print(f"shape {args.shape}, prompt {len(prompt)} tokens, {args.new_tokens} new tokens, fp32 on "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    base = load_model(args.shape, dtype="fp32")
    n = sum(p.numel() for p in base.parameters())
    bench(f"base ({n / 1e6:.1f}M)", base, prompt, args)
    del base
    lora = lora_model(args.shape, args.lora_r, args.lora_target)
    bench(f"+ LoRA r{args.lora_r} {args.lora_target} (unmerged)", lora, prompt, args)
    bench("+ LoRA merged", merge_adapter(lora), prompt, args)


if __name__ == "__main__":
    main()
