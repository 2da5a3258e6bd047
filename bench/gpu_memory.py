"""GPU: peak memory, real tokens/s and MFU of ChatGLM3-6B-shape LoRA (bf16, padded and packed) and QLoRA-4 at the official defaults.

Prepared for a lent GPU (not run on CPU). A randomly initialised ``chatglm3-6b`` shape; the official ChatGLM3
LoRA setup: r 8 / alpha 32 / dropout 0.1 on query_key_value (q/k/v here), batch 4, max input 256 / output 512,
gradient checkpointing, AdamW; padded batches of bench_train.py's synthetic records (as the official script
feeds them) through glmtune's training loss. Prints, per variant, peak allocated / reserved GPU memory against
the official 14082 MiB, real tokens/s, and MFU against the measured bf16 matmul peak, plus ``glmtune plan``'s
estimate for the same setup. Variants: ``lora`` (padded batches, as the official script), ``lora-packed``
(glmtune's default: packed rows, attention per sample), ``lora-packed-compiled`` (the same with each layer's
MLP and norms through ``torch.compile``, dynamic shapes: the attention's per-sample split stays eager),
``lora-packed-every2`` (``training.checkpoint_every_n_layers=2``), ``lora-packed-keep-attention``
(``training.checkpoint_keep_attention=true``: is it worth its memory on a GPU?) and ``qlora4``. First, on the
78.7M bench model in fp32 and bf16, the per-token losses of padded and packed rows on this GPU's attention kernels
(``bench_train.compare_losses``: packed rows attend within their samples). Budget: about 6 minutes for
all on an H100-class GPU::

    python bench/gpu_memory.py                  # every variant, 3 warm-up + 8 timed steps each
    python bench/gpu_memory.py --variant qlora4 --steps 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import batches, compare_losses, synthetic_samples  # noqa: E402  (the training benchmark's records)

OFFICIAL_LORA_MIB = 14082  # ChatGLM3 finetune_demo README: LoRA at these defaults


def matmul_peak_tflops(n: int = 8192, repeat: int = 20) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeat / (time.perf_counter() - start) / 1e12


VARIANTS = ("lora", "lora-packed", "lora-packed-keep-attention", "lora-packed-compiled", "lora-packed-every2", "qlora4")


def build(bits: int | None, every: int = 1, compiled: bool = False, packed: bool = False, keep: bool = False):
    import torch
    from glmtune.methods import prepare
    from glmtune.methods.quantize import quantize_model
    from glmtune.models.checkpointing import checkpointing_kwargs
    from glmtune.models.loading import random_model

    # QLoRA: built in CPU memory and quantized layer by layer onto the GPU, as glmtune train does.
    model = random_model("chatglm3-6b", dtype=torch.bfloat16, device="cpu" if bits else "cuda")
    if bits:
        model = quantize_model(model, bits=bits, compute_dtype=torch.bfloat16, device="cuda")
    model.config.use_cache = False
    model = prepare(model, "lora", {"r": 8, "alpha": 32, "dropout": 0.1, "target": "qkv"}).model
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs(keep),
                                          every_n_layers=every)
    if packed:
        from glmtune.models.packed_attention import enable_packed_attention

        enable_packed_attention(model)
    if compiled:
        from glmtune.models import find_glm

        for layer in find_glm(model).model.layers:  # regional: shapes vary per batch, the attention split is eager
            for part in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
                part.compile(dynamic=True)
    return model


def run_one(variant: str, steps: int, warmup: int) -> dict:
    import torch
    from glmtune.train.trainer import model_labelled_weight
    from glmtune.train.loss import answer_only_loss, find_lm_head

    bits = 4 if variant == "qlora4" else None
    packed = "packed" in variant
    model = build(bits, every=2 if variant.endswith("every2") else 1, compiled="compiled" in variant,
                  packed=packed, keep="keep-attention" in variant).train()
    n_params = sum(p.numel() for p in model.parameters())
    head = find_lm_head(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.reset_peak_memory_stats()
    seconds, tokens = 0.0, 0
    weight = model_labelled_weight(model)  # glmtune's balanced steps, as `glmtune train`
    for i, inputs in enumerate(batches("packed" if packed else "padded", synthetic_samples(400, 65024), 4,
                                       weight=weight)):
        if i == warmup + steps:
            break
        inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = answer_only_loss(model, head, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            seconds += time.perf_counter() - start
            tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int((inputs["input_ids"] != 0).sum())
    tokens_per_s = tokens / seconds
    # Frozen-base LoRA with checkpointing: forward, recomputed forward, and backward through activations (no weight
    # gradients for frozen layers) ~ 2N + 2N + 2N FLOPs per token (embeddings excluded: no matmul).
    flops = 6 * (n_params - 65024 * 4096) * tokens_per_s
    return {"variant": variant, "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20, "tokens_per_s": tokens_per_s,
            "model_tflops": flops / 1e12, "loss": float(loss)}


def plan_estimate(bits: int | None) -> float:
    from glmtune.train.plan import Setup, estimate, model_shape

    setup = Setup(lora_r=8, lora_dropout=0.1, bits=bits, batch=4, length=769, answer_length=512, checkpointing=True)
    return estimate(model_shape("chatglm3-6b"), setup).total / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="variants of a full run, comma-separated")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_one(args.variant, args.steps, args.warmup)), flush=True)
        return 0
    import torch

    for dtype in (torch.float32, torch.bfloat16):  # packed rows attend within their samples on this GPU's kernels too
        compare_losses(device="cuda", dtype=dtype)
    peak = matmul_peak_tflops()
    print(f"measured bf16 matmul peak: {peak:.0f} TFLOP/s")
    for variant in args.variants.split(","):  # each in a fresh process: clean peak memory
        bits = 4 if variant == "qlora4" else None
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                              "--warmup", str(args.warmup)], capture_output=True, text=True)
        if out.returncode:
            print(f"{variant}: failed\n{out.stderr[-3000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{variant:20} peak allocated {r['peak_allocated_mib']:7.0f} MiB (reserved {r['peak_reserved_mib']:.0f}; "
              f"official LoRA {OFFICIAL_LORA_MIB}; glmtune plan {plan_estimate(bits):.0f}), "
              f"{r['tokens_per_s']:.0f} tokens/s, MFU {r['model_tflops'] / peak:.1%}, loss {r['loss']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
