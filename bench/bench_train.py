"""Training throughput on CPU: real (non-padding) tokens/s and peak RSS, padded vs packed batches.

Setup (issue 4, comparable with the official finetune_hf.py on the same machine):
shape ``chatglm3-bench`` (4 layers, hidden 512, 8 heads x 64, 2 kv groups, ffn 1536,
vocab 65024; 78.7M parameters) stored fp16 and trained in fp32 on CPU; LoRA r 8 /
alpha 32 / dropout 0.1 on q/k/v; batch 4; max input 256 / output 512; 2000 synthetic
single-turn records, prompt 10-200 and answer 20-400 tokens (log-normal).
Also checks that per-token losses agree between a padded and a packed batch
of the same samples. Run one mode per process so peak RSS is per mode::

    python bench/bench_train.py --mode padded-full-logits --steps 20   # the official computation
    python bench/bench_train.py --mode padded --steps 20               # glmtune's loss, padded
    python bench/bench_train.py --mode packed --steps 20               # glmtune's loss, packed
    python bench/bench_train.py --mode losses
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch


def synthetic_samples(n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Single-turn chat samples with the official label layout and log-normal lengths."""
    rng = np.random.default_rng(seed)

    def lengths(lo, hi):
        mu, sigma = (np.log(lo) + np.log(hi)) / 2, (np.log(hi) - np.log(lo)) / 4
        return np.clip(rng.lognormal(mu, sigma, n), lo, hi).astype(int)

    prompts, answers = lengths(10, 200), lengths(20, 400)
    samples = []
    for p, a in zip(prompts, answers):
        p, a = min(p, 256 - 5), min(a, 512)  # max_input_length 256 / max_output_length 512
        prompt = [64790, 64792, 64795, *rng.integers(3, 64000, p).tolist(), 64796]
        answer = [*rng.integers(3, 64000, a).tolist(), 2]
        ids = prompt + answer
        labels = [-100] * len(prompt) + answer
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def build_model():
    from glmtune import load_model
    from glmtune.methods import prepare

    model = load_model("chatglm3-bench", dtype="fp16", seed=0).float()  # fp16 storage, trained in fp32 on CPU
    model.config.use_cache = False
    return prepare(model, "lora", {"r": 8, "alpha": 32, "dropout": 0.1, "target": "qkv"}).model


def run_mode(mode: str, steps: int, batch: int) -> None:
    """Train ``steps`` LoRA steps as ``glmtune train`` does and print real tokens/s and peak RSS.

    ``padded-full-logits`` is the official demo's computation (right-padded
    batches, logits for every position); ``padded`` and ``packed`` use
    glmtune's training loss (logits only where labels are, :mod:`glmtune.train.loss`),
    ``packed`` with rows of max_input + max_output + 1 = 769 tokens, ``batch`` rows a step.
    """
    from glmtune.data.collate import PackedCollator, PackedDataset, PaddedCollator
    from glmtune.train.loss import answer_only_loss, find_lm_head

    samples = synthetic_samples(2000, 65024)
    model = build_model().train()
    lm_head = find_lm_head(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if mode == "packed":
        data, collate = PackedDataset(samples, 769), PackedCollator()
        batch_of = lambda i: collate([data[j] for j in range(i * batch, (i + 1) * batch)])  # noqa: E731
    else:
        collate = PaddedCollator()
        batch_of = lambda i: collate(samples[i * batch:(i + 1) * batch])  # noqa: E731
    real = slots = 0
    start = None
    for step in range(steps + 1):
        inputs = batch_of(step)
        n_real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int((inputs["input_ids"] != 0).sum())
        inputs["use_cache"] = False
        if mode == "padded-full-logits":
            loss = model(**inputs).loss
        else:
            loss = answer_only_loss(model, lm_head, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 0:
            start = time.perf_counter()  # first step warms up allocators; not timed
            continue
        real += n_real
        slots += inputs["input_ids"].numel()
    elapsed = time.perf_counter() - start
    rss = peak_rss_mb()
    print(f"{mode}: {steps} steps, {real / elapsed:.0f} real tokens/s, padding {100 * (1 - real / slots):.0f}% "
          f"of token slots, peak RSS {rss:.0f} MB, {elapsed / steps:.2f} s/step, threads {torch.get_num_threads()}")


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_losses(n: int = 4) -> None:
    """Per-token losses of the same samples, padded vs packed, in eval mode (no dropout)."""
    from glmtune.data.collate import PackedCollator, PaddedCollator

    samples = synthetic_samples(n, 65024, seed=1)
    model = build_model().eval()
    with torch.no_grad():
        pb = PaddedCollator()(samples)
        logits = model(input_ids=pb["input_ids"], attention_mask=pb["attention_mask"],
                       position_ids=pb["position_ids"]).logits
        packed = PackedCollator()(samples)
        plogits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    worst, offset = 0.0, 0
    for i, s in enumerate(samples):
        m = len(s["input_ids"])
        a = torch.nn.functional.cross_entropy(logits[i, : m - 1], pb["input_ids"][i, 1:m], reduction="none")
        b = torch.nn.functional.cross_entropy(plogits[0, offset: offset + m - 1],
                                              packed["input_ids"][0, offset + 1: offset + m], reduction="none")
        worst = max(worst, float((a - b).abs().max()))
        offset += m
    print(f"per-token loss, padded vs packed, {n} samples: max |difference| = {worst:.2e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("padded-full-logits", "padded", "packed", "losses"), default="packed")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.mode == "losses":
        compare_losses()
    else:
        run_mode(args.mode, args.steps, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
