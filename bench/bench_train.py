"""Training throughput on CPU: step time (median, spread), real tokens/s and peak RSS per batch mode.

Setup (issue 4, comparable with the official finetune_hf.py on the same machine):
shape ``chatglm3-bench`` (4 layers, hidden 512, 8 heads x 64, 2 kv groups, ffn 1536,
vocab 65024; 78.7M parameters) stored fp16 and trained in fp32 on CPU; LoRA r 8 /
alpha 32 / dropout 0.1 on q/k/v; batch 4; max input 256 / output 512; gradient
checkpointing (the official script always enables it); 2000 synthetic single-turn
records, prompt 10-200 and answer 20-400 tokens (log-normal), in a seeded shuffled
order as the Trainer's sampler gives them.

Modes: ``padded-full-logits`` is the official computation: right-padded batches, logits at
every position, and the loss as THUDM's ``modeling_chatglm.py`` takes it (the decoder's seq-first
logits copied batch-first, cast to fp32, shifted by a second copy, mean cross entropy);
``padded-hf-logits`` is the same with transformers' causal-LM loss, which copies nothing (the
baseline before 2026-12-05); ``padded`` is glmtune's training loss (logits only where labels are,
:mod:`glmtune.train.loss`) on the same batches; ``packed`` is glmtune's default: rows of max_input +
max_output + 1 = 769 tokens (``batch`` rows a step), attention per sample
(:mod:`glmtune.models.packed_attention`), in glmtune's order of steps of balanced work
(:mod:`glmtune.data.sampler`); ``packed-shuffled`` takes the same rows in a plain shuffled order.
``MODE@N`` checkpoints only every N-th layer (``training.checkpoint_every_n_layers``; ``@0``: no
checkpointing); the official computation always checkpoints every layer.

The default run takes the modes' steps in turn in one process (step 1 of each mode,
then step 2, ...), so the modes share whatever else the machine runs and their
ratios hold on a busy machine, and prints per mode the median step time, its spread
(max/min over the timed steps, 6-30 by default), real tokens/s, the ratio to the
official computation, and with ``--rss`` each mode's peak RSS, trained alone in a
fresh process::

    python bench/bench_train.py --rss                    # all modes, interleaved
    python bench/bench_train.py --attention sdpa         # packed rows through a dense block mask (before)
    python bench/bench_train.py --mode packed --steps 30 # one mode, this process
    python bench/bench_train.py --mode losses            # padded vs packed per-token losses, both official losses
    python bench/bench_train.py --modes padded-full-logits,packed,packed@2,packed@0  # checkpointing choices
    python bench/bench_train.py --modes packed,packed-shuffled  # balanced steps vs a plain shuffle of the rows
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

MODES = ("padded-full-logits", "padded-hf-logits", "padded", "packed", "packed-shuffled")
OFFICIAL = ("padded-full-logits", "padded-hf-logits")  # train the copy with the official full recompute
DEFAULT_MODES = ("padded-full-logits", "padded-hf-logits", "padded", "packed", "packed@2")


def parse_mode(spec: str) -> tuple[str, int | None]:
    """``packed@2`` -> ("packed", 2): the batch mode and its checkpointing (every N-th layer; None: as --no-checkpointing says)."""
    mode, _, every = spec.partition("@")
    if mode not in MODES or (every and not every.isdigit()):
        raise SystemExit(f"unknown mode {spec!r}: expected one of {', '.join(MODES)}, optionally with @N")
    return mode, int(every) if every else None


def checkpoint_layers(model, every: int) -> None:
    """Checkpoint layers 0, every, 2 x every, ... (0: none), as transformers' ``every_n_layers`` chooses them."""
    from glmtune.models import find_glm

    for i, layer in enumerate(find_glm(model).model.layers):
        layer.gradient_checkpointing = every > 0 and i % every == 0


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


def build_model(checkpointing: bool = False, packed_attention: bool = False, official: bool = False):
    """The benchmark model; ``official``: checkpointing recomputes everything, as the official script's does."""
    from glmtune import load_model
    from glmtune.methods import prepare
    from glmtune.models.checkpointing import checkpointing_kwargs
    from glmtune.models.packed_attention import enable_packed_attention

    model = load_model("chatglm3-bench", dtype="fp16", seed=0).float()  # fp16 storage, trained in fp32 on CPU
    model.config.use_cache = False
    model = prepare(model, "lora", {"r": 8, "alpha": 32, "dropout": 0.1, "target": "qkv"}).model
    if checkpointing:
        # glmtune's checkpointing keeps each layer's attention output (selective); the official recomputes all.
        kwargs = {"use_reentrant": False} if official else checkpointing_kwargs()
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    if packed_attention:
        enable_packed_attention(model)
    return model


def batches(mode: str, samples: list[dict], batch: int, seed: int = 0, weight: float = 1.0):
    """The batches ``glmtune train`` would feed: padded samples in a seeded shuffled order (the Trainer's
    random sampler), packed rows in glmtune's order of balanced steps (``weight``: a labelled token's
    extra cost, :func:`glmtune.data.sampler.labelled_weight`), ``packed-shuffled`` in a plain shuffle."""
    from glmtune.data.collate import PackedCollator, PackedDataset, PaddedCollator
    from glmtune.data.sampler import BalancedSampler, row_work

    if mode.startswith("packed"):
        items, collate = PackedDataset(samples, 769), PackedCollator()
    else:
        items, collate = samples, PaddedCollator()
    if mode == "packed":
        order = list(BalancedSampler(row_work(items.tokens, items.labelled, weight), batch, seed=seed))
    else:
        order = np.random.default_rng(seed).permutation(len(items)).tolist()
    for i in range(0, len(order) - batch + 1, batch):
        yield collate([items[j] for j in order[i:i + batch]])


def official_loss(model, inputs: dict) -> torch.Tensor:
    """The training loss as THUDM's ChatGLM3 ``modeling_chatglm.py`` computes it (same value as transformers').

    Timed in fp32, where the official ``.to(torch.float32)`` and the casts back are no-ops; in bf16/fp16 the
    official code makes two more logits-sized copies.
    """
    from glmtune.models import find_glm

    glm = find_glm(model)
    hidden = glm.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       position_ids=inputs["position_ids"], use_cache=False).last_hidden_state
    # The official decoder is seq-first throughout ([S, B, H], contiguous): this hidden-sized copy stands in for
    # the one its embedding makes (transpose(0, 1).contiguous()), so the count of copies matches.
    logits = glm.lm_head(hidden.transpose(0, 1).contiguous())  # [S, B, V]
    logits = logits.transpose(0, 1).contiguous().to(torch.float32)  # lm_logits.transpose(0, 1).contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = inputs["labels"][..., 1:].contiguous()
    return torch.nn.functional.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                                             ignore_index=-100)


def train_step(model, lm_head, opt, mode: str, inputs: dict) -> tuple[float, int]:
    """One optimizer step as ``glmtune train`` takes it; (seconds, real tokens)."""
    from glmtune.train.loss import answer_only_loss

    n_real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int((inputs["input_ids"] != 0).sum())
    inputs["use_cache"] = False
    start = time.perf_counter()
    if mode == "padded-full-logits":
        loss = official_loss(model, inputs)
    elif mode == "padded-hf-logits":
        loss = model(**inputs).loss
    else:
        loss = answer_only_loss(model, lm_head, inputs)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start, n_real


def run_modes(modes: list[str], steps: int, batch: int, checkpointing: bool, attention: str) -> dict:
    """``steps`` steps of each mode, taken in turn (mode A step 1, mode B step 1, ...).

    Interleaving step by step makes the modes share whatever else the machine runs, so their ratios
    hold on a busy machine; per-step times and real tokens per mode, and the process's peak RSS. The
    official computation trains its own copy (the same weights) with the official checkpointing.
    """
    from glmtune.train.trainer import model_labelled_weight
    from glmtune.train.loss import find_lm_head

    def trainer(official: bool):
        model = build_model(checkpointing, packed_attention=attention == "per-sample" and not official,
                            official=official).train()
        return model, find_lm_head(model), torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    kinds = {m: parse_mode(m)[0] in OFFICIAL for m in modes}
    trainers = {official: trainer(official) for official in sorted(set(kinds.values()))}
    samples = synthetic_samples(2000, 65024)
    weight = model_labelled_weight(trainers[False][0]) if False in trainers else 1.0
    feeds = {m: batches(parse_mode(m)[0], samples, batch, weight=weight) for m in modes}
    out = {m: {"mode": m, "times": [], "real": []} for m in modes}
    for _ in range(steps):
        for m in modes:
            mode, every = parse_mode(m)
            model, lm_head, opt = trainers[kinds[m]]
            if checkpointing:
                checkpoint_layers(model, 1 if every is None else every)
            seconds, real = train_step(model, lm_head, opt, mode, next(feeds[m]))
            out[m]["times"].append(seconds)
            out[m]["real"].append(real)
    for m in modes:
        out[m].update(rss_mb=peak_rss_mb(), threads=torch.get_num_threads())
    return out


def summary(result: dict, skip: int) -> dict:
    """Median step time, spread (max/min), real tokens/s over the timed steps (after ``skip`` warm-up steps)."""
    times, real = result["times"][skip:], result["real"][skip:]
    return {"median_s": statistics.median(times), "spread": max(times) / min(times),
            "tokens_s": sum(real) / sum(times), "rss_mb": result["rss_mb"]}


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_losses(n: int = 4, device: str = "cpu", dtype=torch.float32) -> None:
    """Per-token losses of the same samples, padded vs packed (both attention paths), in eval mode (no dropout).

    ``device``/``dtype``: where the model runs (bench/gpu_memory.py checks a GPU's kernels with it).
    """
    from glmtune.data.collate import PackedCollator, PaddedCollator
    from glmtune.models.packed_attention import enable_packed_attention

    samples = synthetic_samples(n, 65024, seed=1)
    model = build_model().to(device=device, dtype=dtype).eval()
    pb, packed = PaddedCollator()(samples), PackedCollator()(samples)
    pb = {k: v.to(device) for k, v in pb.items()}
    packed = {k: v.to(device) if torch.is_tensor(v) else v for k, v in packed.items()}
    with torch.no_grad():
        logits = model(input_ids=pb["input_ids"], attention_mask=pb["attention_mask"],
                       position_ids=pb["position_ids"]).logits
        masked = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        official = official_loss(model, pb)
        transformers_loss = model(**pb, use_cache=False).loss
        enable_packed_attention(model)
        per_sample = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    print(f"loss, the official modeling code's path vs transformers': {float(official):.6f} vs "
          f"{float(transformers_loss):.6f}")
    for name, plogits in (("dense block mask", masked), ("per-sample attention", per_sample)):
        worst, offset = 0.0, 0
        for i, s in enumerate(samples):
            m = len(s["input_ids"])
            a = torch.nn.functional.cross_entropy(logits[i, : m - 1].float(), pb["input_ids"][i, 1:m], reduction="none")
            b = torch.nn.functional.cross_entropy(plogits[0, offset: offset + m - 1].float(),
                                                  packed["input_ids"][0, offset + 1: offset + m], reduction="none")
            worst = max(worst, float((a - b).abs().max()))
            offset += m
        print(f"per-token loss, padded vs packed ({name}), {n} samples, {device} {str(dtype)[6:]}: "
              f"max |difference| = {worst:.2e}")


def peak_rss_alone(mode: str, args) -> float:
    """Peak RSS of ``mode`` trained alone in a fresh process (the same steps)."""
    cmd = [sys.executable, __file__, "--mode", mode, "--json", "--steps", str(args.steps),
           "--batch", str(args.batch), "--attention", args.attention]
    cmd += ([] if args.checkpointing else ["--no-checkpointing"]) + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])[mode]["rss_mb"]


def interleaved(args) -> None:
    """Every mode, step by step in turn in this process; then (``--rss``) each mode's peak RSS alone."""
    results = run_modes(args.modes, args.steps, args.batch, args.checkpointing, args.attention)
    figures = {m: summary(r, args.skip) for m, r in results.items()}
    base = figures.get("padded-full-logits")
    print(f"steps {args.skip + 1}-{args.steps} of each mode, interleaved; batch {args.batch}; checkpointing "
          f"{'on' if args.checkpointing else 'off'}; packed attention {args.attention}; "
          f"threads {torch.get_num_threads()}")
    for mode, f in figures.items():
        rss = f"{peak_rss_alone(mode, args):.0f} MB" if args.rss else "(--rss)"
        line = (f"{mode:>19}: {f['median_s']:.2f} s/step median, spread {f['spread']:.2f}x, "
                f"{f['tokens_s']:.0f} real tokens/s, peak RSS {rss}")
        if base:
            line += f", {f['tokens_s'] / base['tokens_s']:.2f}x the official computation's tokens/s"
        print(line, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="all", help=f"all, losses, or one mode: {', '.join(MODES)} (optionally @N)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help="modes of --mode all, comma-separated")
    p.add_argument("--rss", action="store_true", help="--mode all: also each mode's peak RSS, run alone")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the figures")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--attention", choices=("per-sample", "sdpa"), default="per-sample",
                   help="packed rows: per-sample attention (glmtune) or transformers' sdpa with a dense block mask")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default torch's); 1 on a shared machine, where spare cores are none")
    p.add_argument("--json", action="store_true", help="one mode: print its raw per-step figures as JSON")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    for spec in args.modes + ([args.mode] if args.mode not in ("all", "losses") else []):
        parse_mode(spec)  # an unknown mode stops here, before the model is built
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "losses":
        compare_losses()
    elif args.mode == "all":
        interleaved(args)
    else:
        results = run_modes([args.mode], args.steps, args.batch, args.checkpointing, args.attention)
        if args.json:
            print(json.dumps(results))
        else:
            s = summary(results[args.mode], min(args.skip, args.steps - 1))
            print(f"{args.mode}: {s['median_s']:.2f} s/step median, spread {s['spread']:.2f}x, "
                  f"{s['tokens_s']:.0f} real tokens/s, peak RSS {s['rss_mb']:.0f} MB, "
                  f"threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
