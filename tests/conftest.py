"""Shared test helpers: where the reference fixtures live, and tiny in-process models.

Two kinds of tests:

- conformance tests compare against values computed by the official code (``reference*.safetensors``,
  ``*-encodings.jsonl``, the real ``tokenizer.model``'s ids); they use ``fixtures``, ``tiny_dir``,
  ``official_tokenizer`` or ``need_fixtures()`` and skip, saying why, when ../shared/fixtures is absent;
- every other test needs only *a* ChatGLM3 tokenizer or model folder: ``tokenizer`` and ``chatglm3_dir``
  give the fixture's when present (so nothing changes there) and otherwise ones built in-process
  (``trained_tokenizer``: SentencePiece trained on the bundled text with ChatGLM3's special-token
  scheme; a random tiny checkpoint in THUDM's layout), so these tests never skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("GLMTUNE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
TINY = FIXTURES / "chatglm3-tiny"
ENCODINGS = FIXTURES / "chatglm3-encodings.jsonl"

_SKIP_WHY = (
    f"reference fixtures not found at {FIXTURES} (the official ChatGLM3 tokenizer and tiny checkpoint); "
    "put ../shared/fixtures beside the project or set GLMTUNE_FIXTURES"
)


def need_fixtures() -> Path:
    """Skip the calling test, saying why, when the fixtures folder is absent."""
    if not TINY.is_dir():
        pytest.skip(_SKIP_WHY)
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return need_fixtures()


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    need_fixtures()
    return TINY


def have_fixtures() -> bool:
    return TINY.is_dir()


@pytest.fixture(scope="session")
def official_tokenizer():
    """The real ChatGLM3 tokenizer (for tests that compare ids with the official ones)."""
    from glmtune import load_tokenizer

    need_fixtures()
    return load_tokenizer(TINY)


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory) -> Path:
    """A small ChatGLM3-scheme tokenizer trained on the bundled self-cognition text, as the quickstart does."""
    import json
    from importlib import resources

    from glmtune.tokenizer import train_tokenizer

    raw = resources.files("glmtune.resources").joinpath("self_cognition.json").read_text(encoding="utf-8")
    texts = [m["content"] for r in json.loads(raw) for m in r["conversations"]]
    out = tmp_path_factory.mktemp("trained-tokenizer")
    train_tokenizer(texts * 4, out, vocab_size=1000)
    return out


@pytest.fixture(scope="session")
def trained_tokenizer(trained_tokenizer_dir):
    from glmtune import load_tokenizer

    return load_tokenizer(trained_tokenizer_dir)


@pytest.fixture(scope="session")
def tokenizer(request):
    """A ChatGLM3 tokenizer: the official one when the fixtures are there, else the trained one."""
    if have_fixtures():
        return request.getfixturevalue("official_tokenizer")
    return request.getfixturevalue("trained_tokenizer")


@pytest.fixture(scope="session")
def chatglm3_dir(request, tmp_path_factory) -> Path:
    """A tiny ChatGLM3 checkpoint in THUDM's layout (config, fp16 shards + index, tokenizer files).

    The fixture's ``chatglm3-tiny`` when present; else a random one of the same shape written by
    glmtune with the trained tokenizer. Never compare its outputs with reference values.
    """
    if have_fixtures():
        return TINY
    from glmtune import load_model
    from glmtune.models import save_model

    out = tmp_path_factory.mktemp("chatglm3-tiny")
    model = load_model("tiny", dtype="fp32", seed=0)
    save_model(model, out, layout="chatglm3", dtype="fp16", max_shard_bytes=5_000_000)  # two shards, as the fixture
    request.getfixturevalue("trained_tokenizer").save_pretrained(out)
    (out / "MODEL_LICENSE").write_text("Stand-in for the ChatGLM3 model license shipped beside official checkpoints.\n")
    return out


@pytest.fixture()
def tiny_model():
    """A fresh random tiny GLM (fixture dimensions, real vocabulary size), float32."""
    from glmtune import load_model

    return load_model("tiny", dtype="fp32", seed=0)


def train_steps(model, optimizer, steps: int, **batch) -> list[float]:
    """``steps`` optimizer steps on one batch (a plain torch loop); the losses, model left in eval mode."""
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def greedy_ids(model, input_ids, steps: int = 16):
    """Step-by-step greedy decoding with the KV cache, as a generation loop drives the model (no eos stop)."""
    import torch

    mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=mask, use_cache=True)
    generated = []
    for _ in range(steps):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        generated.append(token)
        mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
        out = model(input_ids=token, attention_mask=mask, cache=out.cache, use_cache=True)
    return torch.cat(generated, dim=-1)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> dict:
    """A small model folder + trained tokenizer + the bundled self-cognition data, built in-process as the
    quickstart does (no fixtures needed): keys out, data, model, runs."""
    from glmtune.quickstart import make_base_model, make_tokenizer, write_dataset

    out = tmp_path_factory.mktemp("workspace")
    data = write_dataset(out, "Glimmer", "the glmtune team")
    tok, tok_dir = make_tokenizer(out, data, None)
    base = make_base_model(out, tok, tok_dir, seed=0)
    return {"out": out, "data": data, "model": base, "runs": out / "runs"}


# --- multi-process training (issue 14): tests/test_fsdp.py, tests/test_ddp_equivalence.py ----------------------
# One torchrun launch per mode trains every method, then resumes each from its step-4 checkpoint (inside the second
# epoch: 12 records make 3 steps an epoch, so the resumed run skips into epoch 2's own order); the
# single-process references train in this process. The global batch is the same (2 processes x 2 = 1 x 4), and
# dropout is off, so the runs must agree to float rounding.
DIST_METHODS = {"lora": {"lora": {"dropout": 0.0}},
                "ptuning": {"ptuning": {"num_virtual_tokens": 4, "prefix_dropout": 0.0}},
                "full": {}}

_DIST_WORKER = '''
import json, os, shutil, sys
from pathlib import Path
import torch.distributed as dist
from transformers import TrainerCallback
from glmtune.config import load_config
from glmtune.train import run_training
from glmtune.train.distributed import local_bytes

class Memory(TrainerCallback):
    def __init__(self, path):
        self.path = path
    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.path.write_text(json.dumps(local_bytes(model, optimizer)))

def main(spec):
    spec = json.loads(spec)
    world = spec["world"]
    for method, options in spec["methods"].items():
        out = Path(spec["out"]) / method
        cfg = dict(spec["config"], method={"name": method, **options}, output={"dir": str(out), "plots": False})
        cfg["training"] = dict(cfg["training"], batch_size=4 // world, fsdp={"enabled": spec["fsdp"]})
        rank = int(os.environ.get("RANK", "0"))  # the process group starts inside run_training
        mem = Path(spec["out"]) / f"{method}-memory-{rank}.json"
        run_training(load_config(cfg), quiet=True, callbacks=[Memory(mem)])
        if not spec["resume"]:
            continue
        again = out.with_name(method + "-resumed")
        if rank == 0:  # the run as it stood at its step-4 checkpoint
            shutil.copytree(out, again, ignore=shutil.ignore_patterns("final", "checkpoint-6"))
            log = again / "trainer_log.jsonl"
            log.write_text("".join(x for x in log.read_text().splitlines(True) if json.loads(x)["step"] <= 4))
        dist.barrier()
        cfg["output"] = {"dir": str(again), "plots": False}
        cfg["training"] = dict(cfg["training"], resume="4")
        run_training(load_config(cfg), quiet=True)

if __name__ == "__main__":
    main(sys.argv[1])
'''


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def dist_workspace(tmp_path_factory) -> dict:
    """A tiny GLM model folder, a tokenizer and 12 chat records, plus the config every distributed test trains."""
    import json

    from glmtune.models import load_model, save_model
    from glmtune.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("dist")
    rows = [{"conversations": [{"role": "user", "content": f"colour of {i}?"},
                               {"role": "assistant", "content": f"item {i} is {'red' * (1 + i % 3)}."}]}
            for i in range(12)]
    train_tokenizer([m["content"] for r in rows for m in r["conversations"]] * 4, root / "tok", vocab_size=300)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # THUDM's layout: the first rank converts it on load while the others build the model on the meta device.
    save_model(load_model("tiny", vocab_size=load_tokenizer(root / "tok").vocab_size, seed=3), root / "base",
               layout="chatglm3")
    config = {
        "model": {"path": str(root / "base"), "tokenizer": str(root / "tok"), "device": "cpu"},
        "data": {"train_file": "train.jsonl", "data_dir": str(root), "max_input_length": 16,
                 "max_output_length": 16, "cache": False},
        "training": {"max_steps": 6, "logging_steps": 1, "save_steps": 2, "save_total_limit": None,
                     "tensorboard": False, "learning_rate": 1e-3},
        "evaluation": {"strategy": "no"},
    }
    (root / "worker.py").write_text(_DIST_WORKER)
    return {"root": root, "config": config}


def _dist_spec(ws: dict, out, world: int, fsdp: bool, resume: bool) -> str:
    import json

    return json.dumps({"out": str(out), "world": world, "fsdp": fsdp, "resume": resume,
                       "methods": DIST_METHODS, "config": ws["config"]})


@pytest.fixture(scope="session")
def dist_runs(dist_workspace):
    """``dist_runs(mode)``: the run folders of one mode ('single': one process, in this process; 'fsdp' / 'ddp':
    ``torchrun --nproc_per_node 2``), trained once per session: ``{folder}/{method}``, ``{method}-resumed``."""
    import subprocess
    import sys

    cache: dict = {}

    def run(mode: str):
        if mode in cache:
            return cache[mode]
        out = dist_workspace["root"] / mode
        worker = dist_workspace["root"] / "worker.py"
        if mode == "single":
            import importlib.util

            spec = importlib.util.spec_from_file_location("glmtune_dist_worker", worker)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(_dist_spec(dist_workspace, out, 1, False, False))
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(free_port()), str(worker),
                   _dist_spec(dist_workspace, out, 2, mode == "fsdp", True)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
        cache[mode] = out
        return out

    return run


# --- DeepSpeed ZeRO-2 / ZeRO-3 (issue 14): tests/test_deepspeed.py ---------------------------------------------
# The same worker and references as dist_runs: one torchrun launch per ZeRO stage, with THUDM's official
# ds_zero_{2,3}.json (examples/official) unchanged. Under ZeRO-3 the worker's memory probe records the parameter
# partitions each process holds (DeepSpeed keeps them in ds_tensor; the parameters themselves are empty).
_DS_WORKER = '''
import importlib.util, json, os, sys
from pathlib import Path
from transformers import TrainerCallback
import glmtune.train.run as run
from glmtune.train.deepspeed import partitioned_numel

spec = importlib.util.spec_from_file_location("glmtune_dist_worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)

build = run.load_zero3_base
def observed_build(cfg, vocab_size):  # what each process holds once the base is loaded, before DeepSpeed starts
    model = build(cfg, vocab_size)
    out = Path(cfg.output.dir)
    held = {"partitioned": all(hasattr(p, "ds_id") for p in model.parameters()), "numel": partitioned_numel(model)}
    (out.parent / f"{out.name}-built-{os.environ['RANK']}.json").write_text(json.dumps(held))
    return model
run.load_zero3_base = observed_build

class Partitions(TrainerCallback):
    def __init__(self, path):
        self.path = path
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.path.write_text(json.dumps(partitioned_numel(model)))

worker.Memory = Partitions
worker.main(sys.argv[2])
'''

DEEPSPEED_MISSING = ("deepspeed is not installed: pip install 'glmtune[deepspeed]' (on a machine without CUDA: "
                     "DS_BUILD_OPS=0 pip install deepspeed); its CPU ops then compile on first use (about 2 min)")


@pytest.fixture(scope="session")
def ds_runs(dist_workspace):
    """``ds_runs(stage)``: the folder of a ``torchrun --nproc_per_node 2`` launch training every method with the
    official ``ds_zero_{stage}.json`` (batch 2 per process), each also resumed from its step-4 checkpoint."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip(DEEPSPEED_MISSING)
    root = dist_workspace["root"]
    (root / "ds_worker.py").write_text(_DS_WORKER)
    official = Path(__file__).resolve().parent.parent / "examples" / "official"
    cache: dict = {}

    def run(stage: int):
        if stage in cache:
            return cache[stage]
        out = root / f"zero{stage}"
        config = dict(dist_workspace["config"])
        config["training"] = dict(config["training"], deepspeed=str(official / f"ds_zero_{stage}.json"))
        spec = json.dumps({"out": str(out), "world": 2, "fsdp": False, "resume": True, "methods": DIST_METHODS,
                           "config": config})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(root / "ds_worker.py"), str(root / "worker.py"), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
        cache[stage] = out
        return out

    return run
