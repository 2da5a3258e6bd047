"""DeepSpeed ZeRO (``training.deepspeed``): what glmtune adds around transformers' own integration.

The HF Trainer runs DeepSpeed (engine, optimizer, ``global_stepN`` checkpoints, resume); glmtune
only does what building models itself requires:

* **ZeRO-3 construction**: the ``TrainingArguments`` (built before the model) register the
  DeepSpeed config with transformers, so ``is_deepspeed_zero3_enabled()`` holds; the model is then
  constructed under ``deepspeed.zero.Init`` exactly as transformers' ``from_pretrained`` does it
  (no random init, RoPE buffers kept in fp32), so each rank only ever holds its partition, and the
  checkpoint (ChatGLM3 layout converted as usual) is loaded one tensor at a time: every rank
  gathers that tensor (``GatheredParameters(modifier_rank=0)``), the first rank fills it, and it is
  partitioned again. The method (LoRA, P-Tuning, freeze, full) is applied afterwards as usual;
  DeepSpeed partitions the parameters it adds when the engine starts.
* **Saving under ZeRO-3**: every rank gathers the trained parameters one at a time; the first keeps
  a CPU copy, and the method saves those from a meta-device copy of the prepared model (the path
  FSDP2 uses, :func:`glmtune.train.run.unsharded_for_saving`).
* **Checks before any model is loaded**: combinations that cannot work, and DeepSpeed ops the
  config needs that cannot be built here.
"""

from __future__ import annotations

import os
import socket
import warnings
from functools import partial
from pathlib import Path

import torch

from ..config import ConfigError
from ..config.schema import deepspeed_stage, read_deepspeed_config
from ..models import SHAPES, shape_config
from ..models.checkpoint import weight_files
from ..models.loading import (PREFIX_ENCODER_KEYS, check_layer_count, load_weights, model_class, prefix_length,
                              read_model_config)


def check_deepspeed_run(cfg) -> None:
    """Refuse, before the model loads, a DeepSpeed run that cannot work (QLoRA + ZeRO-3, an op that cannot build);
    then let one process without a launcher run it (:func:`one_process_environment`)."""
    path = cfg.training.deepspeed
    if not path:
        return
    config = read_deepspeed_config(path)
    if deepspeed_stage(path, config) == 3 and cfg.model.quantization.bits:
        # bitsandbytes' packed 4/8-bit weights are not partitioned by zero.Init (transformers skips it for
        # quantized models too), so every rank would hold the whole quantized base anyway.
        raise ConfigError(f"training.deepspeed {path}: ZeRO-3 cannot partition a quantized base "
                          "(model.quantization, QLoRA); use a ZeRO-2 config (ds_zero_2.json) or plain torchrun (DDP) "
                          "with QLoRA, or LoRA without model.quantization under ZeRO-3", key="training.deepspeed")
    check_cpu_adam(path, config)
    one_process_environment()
    # DeepSpeed 0.19 calls torch collectives torch 2.13 deprecated, and the warning repeats for every call (hundreds
    # of lines per step); nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` "
                            "is deprecated", category=FutureWarning)


def one_process_environment() -> None:
    """Without a launcher (plain ``glmtune train``), describe a one-process group as torchrun would.

    DeepSpeed always starts a process group; without RANK/WORLD_SIZE in the environment it falls back to MPI
    discovery (mpi4py). transformers' DeepSpeed guide has users set these variables by hand for one process;
    glmtune sets them when no launcher did, so a config with training.deepspeed runs unchanged on one process.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as sock:  # a free port, chosen now: several one-process runs may share the machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ.setdefault(name, value)


def check_resume_engine(checkpoint: Path | None, deepspeed: str | None) -> None:
    """Refuse resuming across DeepSpeed and no DeepSpeed (only possible with training.resume_allow_changes): the
    optimizer state is in DeepSpeed's ``global_stepN/`` or in ``optimizer.pt``, never both."""
    if checkpoint is None:
        return
    written_by_deepspeed = (checkpoint / "latest").is_file() or any(checkpoint.glob("global_step*"))
    if written_by_deepspeed and not deepspeed:
        raise ConfigError(f"cannot resume from {checkpoint} without DeepSpeed: a DeepSpeed run wrote it (its optimizer "
                          "state is in global_step*/); resume with the training.deepspeed config that wrote it, or "
                          "start fresh in another output.dir", key="training.deepspeed")
    if deepspeed and not written_by_deepspeed:
        raise ConfigError(f"cannot resume from {checkpoint} with training.deepspeed: it was written without DeepSpeed "
                          "(no global_step*/ in it); resume without training.deepspeed, as the run that wrote it, or "
                          "start fresh in another output.dir", key="training.deepspeed")


def needs_cpu_adam(config: dict) -> bool:
    """Whether DeepSpeed will build its C++ CPU Adam for this config: an Adam-type optimizer section with the
    optimizer state offloaded to the CPU (the official ds_zero_3.json), as DeepSpeed's engine decides."""
    optimizer = config.get("optimizer")
    zero = config.get("zero_optimization") or {}
    offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    kind = str(optimizer.get("type", "")).lower() if isinstance(optimizer, dict) else ""
    return offload and kind in ("adam", "adamw")


def check_cpu_adam(path: str, config: dict | None = None) -> None:
    """Build (or find built) DeepSpeed's ``cpu_adam`` op now when the config needs it, so that a machine that
    cannot compile it fails here, before the model loads, naming the ways out (rather than in the engine start)."""
    config = read_deepspeed_config(path) if config is None else config
    if not needs_cpu_adam(config):
        return
    from deepspeed.ops.op_builder import CPUAdamBuilder  # deferred: deepspeed is an optional, heavy import

    builder = CPUAdamBuilder()
    try:
        if not builder.is_compatible(verbose=False):
            raise RuntimeError("DeepSpeed reports the op as incompatible with this system")
        builder.load(verbose=False)  # JIT compile once (~2 min), cached in TORCH_EXTENSIONS_DIR afterwards
    except Exception as exc:  # noqa: BLE001 - compiler errors come as many types; all mean "cannot build"
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"training.deepspeed {path}: its optimizer (type {config['optimizer'].get('type')} with "
            "zero_optimization.offload_optimizer on the CPU) needs DeepSpeed's cpu_adam op, which cannot be built "
            f"here ({reason}); install a C++ compiler and ninja (or reinstall with DS_BUILD_CPU_ADAM=1 pip install "
            "deepspeed), or remove zero_optimization.offload_optimizer and the optimizer section (the Trainer's "
            "torch AdamW is then used)",
            key="training.deepspeed") from None


def zero3_enabled() -> bool:
    """Whether this run's TrainingArguments (built before the model) asked for ZeRO-3."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled  # deferred: transformers' DS module

    return is_deepspeed_zero3_enabled()


def is_zero3(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are ZeRO-3 partitions (DeepSpeed gives each one a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _zero_init_contexts():
    """The contexts transformers' ``from_pretrained`` constructs a ZeRO-3 model under (modeling_utils)."""
    import deepspeed  # deferred: optional, heavy
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import deepspeed_config, prevent_arange_dtype_change
    from transformers.utils.generic import ContextManagers

    # prevent_arange_dtype_change must be entered before zero.Init (RoPE's inv_freq stays fp32).
    return ContextManagers([no_init_weights(), prevent_arange_dtype_change(),
                            deepspeed.zero.Init(config_dict_or_path=deepspeed_config())])


def load_zero3_base(cfg, vocab_size: int | None):
    """The base model constructed partitioned (``deepspeed.zero.Init``), its checkpoint loaded tensor by tensor.

    A named shape (random weights, for tests and benchmarks) is initialised by transformers' ZeRO-3 init, so its
    values differ from a one-process run of the same shape; a model folder gives the same weights as always. The
    dtype is the DeepSpeed config's (its bf16 / fp16 sections, ``auto`` filled from the run's precision), as in
    transformers.
    """
    from transformers import AutoModelForCausalLM  # deferred: only a ZeRO-3 run needs the Auto classes

    path = cfg.model.path
    # Constructing consumes no random numbers the run would otherwise see: LoRA / P-Tuning weights created next
    # are then the same as in a one-process run (training.seed holds from load_prepared's set_seed).
    with torch.random.fork_rng(devices=[]):
        if path in SHAPES:
            torch.manual_seed(cfg.training.seed)
            config = shape_config(path, vocab_size=vocab_size)
            config._attn_implementation = "sdpa"
            model = AutoModelForCausalLM.from_config(config)  # transformers' ZeRO-3 construction and init
        else:
            folder = Path(path)
            layout, config = read_model_config(folder, cfg.model.family or None)
            config._attn_implementation = "sdpa"
            files = weight_files(folder)
            check_layer_count(files, layout, config)
            with _zero_init_contexts():
                model = model_class(config)(config)
            params = dict(model.named_parameters())
            expected = {name: tuple(p.ds_shape) for name, p in params.items()}
            dtype = next(iter(params.values())).dtype  # the dtype zero.Init chose from the DeepSpeed config
            skip = PREFIX_ENCODER_KEYS if prefix_length(folder) else None
            load_weights(model, files, layout, dtype, "cpu", skip=skip, expected=expected,
                         put=partial(_fill, params))
    model.name_or_path = str(path)  # as load_model records it (PEFT writes it into adapter_config.json)
    model.eval()
    return model


def _fill(params: dict, part: dict) -> None:
    """Put one shard's tensors into their partitioned parameters: gathered one at a time, filled by rank 0."""
    import deepspeed  # deferred: optional, heavy

    first = torch.distributed.get_rank() == 0
    for name, value in part.items():
        param = params[name]
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if first:
                with torch.no_grad():
                    param.copy_(value.to(param.device))


def gather_zero3_trained(model: torch.nn.Module) -> dict:
    """The trained parameters whole, on the first rank's CPU (other ranks: empty); every rank must call it.

    One parameter is gathered at a time, so no rank but the first ever holds more than one whole tensor.
    """
    import deepspeed  # deferred: optional, heavy

    first = torch.distributed.get_rank() == 0
    trained = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([param]):
            if first:
                trained[name] = param.detach().to("cpu", copy=True)
    return trained


def partitioned_numel(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model) for a ZeRO-3 model (its partitions)."""
    local = whole = 0
    for param in model.parameters():
        if hasattr(param, "ds_tensor"):
            local += param.ds_tensor.numel()
            whole += param.ds_numel
        else:
            local += param.numel()
            whole += param.numel()
    return local, whole
