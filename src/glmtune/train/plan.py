"""The memory planner: expected peak memory per device of a training config, before anything loads.

Pure arithmetic on the model's shape (a named shape, or a folder's ``config.json``) and the config:
weights at their dtype or quantized bits, trained parameters (float32), their gradients, optimizer state,
activations for the configured batch and lengths (with and without gradient checkpointing), and the
runtime's own share. Calibrated against measured peaks (tests/test_plan.py: peak RSS on CPU).

Activation counts follow transformers' GLM decoder layer as autograd keeps it (bytes per token per layer):
the two RMSNorms keep a float32 copy of their input plus their output; attention keeps q, k, v, the rotated
q and k, k and v repeated to every head (SDPA), its output and the o_proj input; the MLP keeps gate_up's
output (2 x ffn), SiLU's output and down_proj's input. The output layer runs in 512-row chunks through one
reused buffer (:mod:`glmtune.train.loss`), so full logits never exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ConfigError, TrainConfig
from ..config.schema import keeps_attention
from ..models import SHAPES

GIB = 1024**3
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Optimizer state per trained parameter, in bytes (AdamW: two float32 moments).
_OPTIMIZER_BYTES = {"sgd": 0, "adafactor": 0.5, "adamw_bnb_8bit": 2, "adamw_8bit": 2, "paged_adamw_8bit": 2,
                    "lion_8bit": 1, "paged_lion_8bit": 1, "lion_32bit": 4, "paged_lion_32bit": 4}
_CUDA_RUNTIME = int(0.75 * GIB)  # CUDA context, cuBLAS workspace and allocator slack (not yet measured here)
_CPU_RUNTIME = 40 * 2**20  # malloc arenas, autograd bookkeeping, one-off buffers: measured (tests/test_plan.py)
_LOSS_CHUNK = 512  # rows of logits the output layer computes at once, in one buffer (train/loss.py)


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a GLM model."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    qkv_bias: bool = True

    def linears(self) -> dict[str, tuple[int, int]]:
        """Decoder-layer linear layers: name -> (in_features, out_features)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_up_proj": (self.hidden, 2 * self.ffn), "down_proj": (self.ffn, self.hidden)}

    def layer_params(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return sum(i * o for i, o in self.linears().values()) + bias + 2 * self.hidden

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linears().values())

    def total_params(self) -> int:
        return self.layers * self.layer_params() + self.hidden + 2 * self.vocab * self.hidden


def shape_from_dict(cfg: dict) -> Shape:
    """A Shape from a ChatGLM3 (THUDM) or native GLM ``config.json`` dict."""
    if cfg.get("model_type") == "glm" or "num_hidden_layers" in cfg:
        heads = cfg["num_attention_heads"]
        return Shape(cfg["hidden_size"], cfg["num_hidden_layers"], heads, cfg.get("num_key_value_heads", heads),
                     cfg.get("head_dim") or cfg["hidden_size"] // heads, cfg["intermediate_size"], cfg["vocab_size"],
                     bool(cfg.get("attention_bias", True)))
    heads = cfg["num_attention_heads"]
    kv = cfg.get("multi_query_group_num", heads) if cfg.get("multi_query_attention") else heads
    return Shape(cfg["hidden_size"], cfg["num_layers"], heads, kv, cfg.get("kv_channels") or cfg["hidden_size"] // heads,
                 cfg["ffn_hidden_size"], cfg.get("padded_vocab_size") or cfg["vocab_size"], bool(cfg.get("add_qkv_bias")))


def model_shape(path: str, vocab_size: int | None = None) -> Shape:
    """The shape of ``model.path``: a named shape or a model folder (its config.json only; no weights read)."""
    named = _shape_name(path)
    if named:
        shape = shape_from_dict(SHAPES[named])
    else:
        config_file = Path(path) / "config.json"
        try:
            shape = shape_from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except OSError:
            raise ConfigError(f"model.path {path!r}: no config.json to plan from; give a model folder, or plan for a "
                              f"named shape: model.path=NAME with NAME one of {', '.join(SHAPES)}", key="model.path") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{config_file}: not a GLM/ChatGLM config the planner can read ({exc!r})") from None
    return replace(shape, vocab=vocab_size) if vocab_size else shape


def _shape_name(path: str) -> str | None:
    """A named shape for ``path``: the name itself, or a hub-style path not on disk (THUDM/chatglm3-6b)."""
    if path in SHAPES:
        return path
    if (Path(path) / "config.json").is_file():
        return None
    name = Path(path).name.lower()
    for candidate in (name, re.sub(r"-(chat|hf)$", "", name)):
        if candidate in SHAPES:
            return candidate
    return None


def plan_name(path: str) -> str:
    """How the report names the model: the named shape planned for, else the path."""
    named = _shape_name(path)
    return path if named is None or named == path else f"{named} (for {path})"


@dataclass(frozen=True)
class Setup:
    """The run settings memory depends on (from a TrainConfig: :func:`setup_from_config`)."""

    method: str = "lora"
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    lora_dropout: float = 0.0
    dora: bool = False
    prefix_tokens: int = 128
    prefix_projection_size: int | None = None
    freeze_layers: int = 2
    bits: int | None = None
    double_quant: bool = True
    storage: str = "bf16"
    compute: str = "bf16"
    optim: str = "adamw_torch"
    batch: int = 4
    length: int = 768
    answer_length: int = 512
    checkpointing: bool = False
    checkpoint_every: int = 1  # with checkpointing: every N-th layer is checkpointed
    keep_attention: bool = False  # with checkpointing: each checkpointed layer also keeps its attention output
    offload: bool = False
    device: str = "cuda"


def setup_from_config(cfg: TrainConfig) -> Setup:
    """The planner's view of a config; precision ``auto`` plans for a bf16 GPU unless model.device is cpu."""
    on_cpu = cfg.model.device == "cpu"
    compute = cfg.training.precision if cfg.training.precision != "auto" else ("fp32" if on_cpu else "bf16")
    storage = compute if cfg.model.dtype == "auto" else cfg.model.dtype
    d, m = cfg.data, cfg.method
    answer = d.max_output_length or 512
    length = d.pack_length if d.packing and d.pack_length else (d.max_seq_length or (d.max_input_length or 512) + answer + 1)
    extra: dict = {}
    if m.name == "lora":
        o = m.options
        extra = dict(lora_r=o.r, lora_targets=tuple(o.target_modules()), lora_dropout=o.dropout, dora=o.use_dora)
    elif m.name == "ptuning":
        o = m.options
        extra = dict(prefix_tokens=o.num_virtual_tokens,
                     prefix_projection_size=(o.prefix_hidden_size or 0) if o.prefix_projection else None)
    elif m.name == "freeze":
        extra = dict(freeze_layers=abs(m.options.trainable_layers or 2))
    q = cfg.model.quantization
    return Setup(method=m.name, bits=q.bits, double_quant=q.double_quant, storage=storage, compute=compute,
                 optim=cfg.training.optim, batch=cfg.training.batch_size, length=length, answer_length=min(answer, length),
                 checkpointing=cfg.training.gradient_checkpointing, offload=cfg.training.offload_activations,
                 checkpoint_every=cfg.training.checkpoint_every_n_layers,
                 keep_attention=keeps_attention(cfg.training, "cpu" if on_cpu else "cuda"),
                 device="cpu" if on_cpu else "cuda", **extra)


def trained_params(shape: Shape, s: Setup) -> int:
    if s.method == "full":
        return shape.total_params()
    if s.method == "freeze":
        return min(s.freeze_layers, shape.layers) * shape.layer_params()
    if s.method == "ptuning":
        kv = shape.layers * 2 * shape.kv_heads * shape.head_dim
        if s.prefix_projection_size is None:
            return s.prefix_tokens * kv
        p = s.prefix_projection_size or shape.hidden
        return s.prefix_tokens * shape.hidden + shape.hidden * p + p + p * kv + kv
    sizes = [shape.linears()[t] for t in s.lora_targets if t in shape.linears()]
    return shape.layers * sum(s.lora_r * (i + o) + (o if s.dora else 0) for i, o in sizes)


def weight_bytes(shape: Shape, s: Setup) -> float:
    """The model's own weights: float32 where they train (full, freeze), quantized layers at their bits."""
    if s.method == "full":
        return 4.0 * shape.total_params()
    store = _BYTES[s.storage]
    frozen = shape.total_params() - (trained_params(shape, s) if s.method == "freeze" else 0)
    extra = 4.0 * trained_params(shape, s) if s.method == "freeze" else 0
    if not s.bits:
        return frozen * store + extra
    linear = shape.linear_params()
    # 4-bit: half a byte per weight + one absmax per 64 (float32, or 8-bit with double quantization).
    per = (0.5 + (1 / 64 + 4 / (64 * 256) if s.double_quant else 4 / 64)) if s.bits == 4 else 1.0
    rows = 0 if s.bits == 4 else shape.layers * sum(o for _, o in shape.linears().values()) * 4  # int8 row scales
    return (frozen - linear) * store + linear * per + rows + extra


def layer_activation_bytes(shape: Shape, s: Setup) -> float:
    """Bytes autograd keeps per token in one decoder layer (module docstring), LoRA dropout included."""
    a = _BYTES[s.compute]
    h, q, kv, f = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    norms = 2 * (4 * h + a * h)
    attention = a * (q + 2 * kv + q + kv + 2 * q + q + q) + 4 * shape.heads
    mlp = a * (2 * f + f + f)
    lora = 0.0
    if s.method == "lora":
        lora = sum(a * s.lora_r + (a + 1) * shape.linears()[t][0] * (s.lora_dropout > 0)
                   for t in s.lora_targets if t in shape.linears())
    return norms + attention + mlp + lora


def activation_bytes(shape: Shape, s: Setup, checkpointing: bool) -> float:
    """Peak activation memory: every layer's saved tensors (or only checkpointed layers' inputs, one recomputed layer).

    transformers checkpoints layers 0, n, 2n, ... with ``every_n_layers`` n; the others keep all their tensors.
    """
    a = _BYTES[s.compute]
    tokens = s.batch * s.length
    per_layer = layer_activation_bytes(shape, s) * tokens
    if s.method == "ptuning":
        per_layer += 4 * a * s.batch * s.prefix_tokens * shape.kv_heads * shape.head_dim * shape.heads // shape.kv_heads
    inputs = a * shape.hidden * tokens
    if checkpointing:
        checkpointed = -(-shape.layers // max(1, s.checkpoint_every))
        # A checkpointed layer keeps its input (and its attention output + log-sum-exp: models/checkpointing.py).
        attention = (a * shape.heads * shape.head_dim + 4 * shape.heads) * tokens * s.keep_attention
        kept = checkpointed * (inputs + attention) + (shape.layers - checkpointed) * per_layer + 2 * per_layer
        # + one recomputed layer and its gradients
    else:
        kept = shape.layers * per_layer + per_layer  # plus the gradients flowing through the last layer
    if s.offload:
        kept = 2 * per_layer + 2 * inputs  # saved tensors live in CPU memory; one layer's worth in flight
    answer = s.batch * s.answer_length
    head = min(answer, _LOSS_CHUNK) * shape.vocab * 4 + 2 * a * answer * shape.hidden  # logits chunk, hidden + grad
    mask = s.batch * s.length * s.length  # SDPA's boolean padding mask
    return kept + inputs * 2 + head + mask


def dequant_bytes(shape: Shape, s: Setup) -> float:
    """The largest quantized layer dequantized for its matmul (a transient)."""
    return max(i * o for i, o in shape.linears().values()) * _BYTES[s.compute] if s.bits else 0.0


@dataclass
class Estimate:
    """Bytes per device, by part."""

    weights: float
    trained: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.trained + self.gradients + self.optimizer + self.activations + self.runtime


def estimate(shape: Shape, s: Setup, checkpointing: bool | None = None) -> Estimate:
    """Expected peak memory of one device for ``s`` (``checkpointing`` None: as the setup says)."""
    checkpointing = s.checkpointing if checkpointing is None else checkpointing
    n = trained_params(shape, s)
    own = s.method in ("full", "freeze")  # trained weights are the model's own (counted in weights)
    optim = _OPTIMIZER_BYTES.get(s.optim, 1 if "8bit" in s.optim else 8)
    return Estimate(
        weights=weight_bytes(shape, s),
        trained=0.0 if own else 4.0 * n,
        gradients=4.0 * n,
        optimizer=optim * n,
        activations=activation_bytes(shape, s, checkpointing) + dequant_bytes(shape, s),
        runtime=_CUDA_RUNTIME if s.device.startswith("cuda") else _CPU_RUNTIME,
    )


def largest(ok, limit: int, step: int = 1) -> int:
    """The largest multiple of ``step`` in [step, limit] for which ``ok`` holds (``ok`` monotone); 0 if none."""
    lo, hi = 0, limit // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def parse_memory(text: str) -> float:
    """``24GiB``, ``24GB``, ``16G``, ``12000MiB``, ``24`` (GiB) -> bytes; GB is read as GiB, as GPUs are sold."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--memory {text!r}: expected a size such as 24GiB, 16GB or 12000MiB")
    return float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or "G")


def fits(shape: Shape, s: Setup, memory: float, checkpointing: bool) -> tuple[int, int]:
    """(largest batch at the configured length, largest length at the configured batch) within ``memory``."""
    def total(**change) -> float:
        return estimate(shape, replace(s, **change), checkpointing).total

    batch = largest(lambda b: total(batch=b) <= memory, 4096)
    length = largest(lambda n: total(length=n, answer_length=min(s.answer_length, n)) <= memory, 131072, 64)
    return batch, length


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f} GiB"


def format_plan(name: str, shape: Shape, s: Setup, memory: float | None = None) -> str:
    """The planner's report: a table by part, without and with gradient checkpointing, and what fits."""
    plain, ckpt = estimate(shape, s, False), estimate(shape, s, True)
    ckpt_label = "checkpointing" if s.checkpoint_every <= 1 else f"every {s.checkpoint_every} layers"
    weights = f"{s.bits}-bit linear + {s.storage}" if s.bits else ("fp32" if s.method == "full" else s.storage)
    lines = [
        f"model {name}: {shape.total_params() / 1e9:.2f}B parameters ({shape.layers} layers, hidden {shape.hidden}, "
        f"vocab {shape.vocab})",
        f"method {s.method}: {trained_params(shape, s):,} trained parameters; optimizer {s.optim}; compute {s.compute}"
        f" on {s.device}",
        f"batch {s.batch} x length {s.length} tokens ({s.answer_length} answer){'; activations offloaded to CPU' if s.offload else ''}",
        "",
        f"{'per device':34}{'no checkpointing':>18}{ckpt_label:>18}",
    ]
    rows = [(f"weights ({weights})", "weights"), ("trained parameters (fp32)", "trained"), ("gradients (fp32)", "gradients"),
            (f"optimizer state ({s.optim})", "optimizer"), ("activations", "activations"),
            ("runtime (CUDA context, workspace)" if s.device.startswith("cuda") else "runtime", "runtime")]
    for label, part in rows:
        lines.append(f"{label:34}{_gib(getattr(plain, part)):>18}{_gib(getattr(ckpt, part)):>18}")
    lines.append(f"{'expected peak':34}{_gib(plain.total):>18}{_gib(ckpt.total):>18}")
    chosen = ckpt_label if s.checkpointing else "no checkpointing"
    lines.append(f"this config uses {chosen}: about {(ckpt if s.checkpointing else plain).total / GIB:.1f} GiB")
    if memory is not None:
        lines.append("")
        for label, flag in (("no checkpointing", False), (ckpt_label, True)):
            batch, length = fits(shape, s, memory, flag)
            at_length = f"batch up to {batch} at length {s.length}" if batch else f"no batch at length {s.length}"
            at_batch = f"length up to {length} at batch {s.batch}" if length else f"no length at batch {s.batch}"
            lines.append(f"fits {memory / GIB:g} GiB with {label}: {at_length}; {at_batch}")
    return "\n".join(lines) + "\n"


__all__ = ["Estimate", "GIB", "Setup", "Shape", "estimate", "largest", "model_shape", "parse_memory",
           "fits", "format_plan", "plan_name", "setup_from_config", "shape_from_dict", "trained_params"]
