"""The quickstart: the whole tool on a small model, offline, in a few minutes on a CPU.

Steps (each the same code path as the real commands):

1. tokenizer: a real GLM model's tokenizer if given (``--tokenizer``, any family),
   else a small SentencePiece model trained on the bundled text, with the same
   special-token scheme;
2. data: the bundled self-cognition set (64 Chinese/English identity Q&A
   pairs, ``{{name}}``/``{{author}}`` filled in), checked as ``glmtune data check`` does;
3. model: a small randomly initialised GLM (shape ``small``), written as a
   model folder like ``glmtune init-model``;
4. training: ``glmtune train`` with a config written to the run folder
   (full fine-tuning by default: a model trained from random weights has no
   knowledge for an adapter to steer; ``--method lora`` shows LoRA);
5. a scripted chat with the trained result, reloaded from disk;
6. export of the result as a standalone model folder.

Layout of ``--out`` (default ``glmtune-quickstart``)::
    tokenizer/  data/  base-model/  run/ (the training run: final/, loss.png, ...)  export/
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .config import load_config
from .data.config import DataConfig
from .data.process import merge_processed, process_source
from .data.registry import Source
from .errors import UserError

MARKER = ".glmtune-quickstart"
# What a quickstart writes in its folder: the only names a later quickstart removes there (the marker last).
MADE = ("tokenizer", "data", "base-model", "run", "export", "train.yaml", MARKER)
QUESTIONS = ("Who are you?", "你是谁？", "Who made you?", "你能做什么？")


@dataclass
class QuickstartOptions:
    out: Path = Path("glmtune-quickstart")
    """Working folder; replaced if it holds an earlier quickstart, refused if it holds anything else."""
    name: str = "Glimmer"
    """The assistant's name taught by the self-cognition data."""
    author: str = "the glmtune team"
    """Who the assistant says made it."""
    tokenizer: str | None = None
    """A real GLM tokenizer (a model folder of any family, or its tokenizer file); default: train a small one."""
    method: str = "full"
    """full (default: learns from random weights in seconds) or lora."""
    steps: int = 60
    """Optimizer steps."""
    seed: int = 0


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say(f"\n=== [{n}/6] {title} ===")


def prepare_folder(out: Path) -> None:
    """Create ``out``; an earlier quickstart's files there are replaced, anything else is left alone."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"{out}: folder exists and was not made by the quickstart; choose another --out")
        here = Path.cwd().resolve()
        if out.resolve() == here or out.resolve() in here.parents:
            raise UserError(f"{out}: is or contains the working folder ({here}); run the quickstart from "
                            "another folder or choose another --out")
        for name in MADE:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by glmtune quickstart; safe to delete\n")


def write_dataset(out: Path, name: str, author: str) -> Path:
    raw = resources.files("glmtune.resources").joinpath("self_cognition.json").read_text(encoding="utf-8")
    raw = raw.replace("{{name}}", name).replace("{{author}}", author)
    path = out / "data" / "self_cognition.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw, encoding="utf-8")
    return path


def make_tokenizer(out: Path, data_file: Path, given: str | None):
    # deferred: imports torch
    from .families import family_of, load_tokenizer
    from .tokenizer import train_tokenizer

    if given:
        tok = load_tokenizer(given)
        say(f"using the {family_of(tok).title} tokenizer from {given} ({tok.vocab_size} tokens)")
        return tok, tok.model_file.parent
    records = json.loads(data_file.read_text(encoding="utf-8"))
    texts = [m["content"] for r in records for m in r["conversations"]]
    tok = train_tokenizer(texts * 4, out / "tokenizer", vocab_size=1000)
    say(f"no tokenizer given: trained a {tok.vocab_size}-token SentencePiece tokenizer on the bundled text "
        f"-> {out / 'tokenizer'} (pass --tokenizer DIR to use a real GLM model's)")
    return tok, out / "tokenizer"


def check_data(data_file: Path, tok) -> None:
    """``glmtune data check`` of the bundled file: the same library calls, its summary printed."""
    cfg = DataConfig(max_input_length=64, max_output_length=96, cache=False)
    result = merge_processed([process_source(Source(data_file), cfg, tok)])
    for problem in result.problems + result.warnings:
        say(str(problem))
    result.report.examples = []  # every problem is already printed above
    say(result.report.format("data"))
    if result.problems:
        raise RuntimeError(f"the bundled dataset failed its check ({len(result.problems)} invalid records); "
                           "please report this")
    say("all records are valid")


def make_base_model(out: Path, tok, tok_dir: Path, seed: int) -> Path:
    from .models import load_model, save_model, write_generation_config  # deferred: imports torch

    base = out / "base-model"
    vocab = tok.vocab_size + (-tok.vocab_size) % 64  # padded like ChatGLM's padded_vocab_size
    model = load_model("small", dtype="fp32", vocab_size=vocab, seed=seed)
    save_model(model, base)
    tok.save_pretrained(base)
    write_generation_config(base, tok)
    n = sum(p.numel() for p in model.parameters())
    say(f"random GLM of shape 'small' ({n / 1e6:.1f}M parameters) -> {base}")
    return base


def train_config(opts: QuickstartOptions, base: Path, data_file: Path) -> dict:
    method = {"name": opts.method}
    lr = 2e-3
    if opts.method == "lora":
        method["lora"] = {"r": 32, "alpha": 64, "dropout": 0.0, "target": "all-linear"}
        lr = 5e-3
    return {
        # Absolute paths: paths inside a config file resolve against the file's own folder.
        "model": {"path": str(base.resolve())},
        "data": {"train_file": str(data_file.resolve()), "max_input_length": 64, "max_output_length": 96},
        "method": method,
        "training": {"learning_rate": lr, "lr_scheduler": "constant_with_warmup", "warmup_steps": 5,
                     "max_steps": opts.steps, "batch_size": 8, "logging_steps": 5, "save_steps": opts.steps,
                     "save_total_limit": 1, "seed": opts.seed, "precision": "fp32", "tensorboard": False},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str((opts.out / "run").resolve())},
    }


def scripted_chat(model_dir: Path, adapter: Path | None, tok_dir: Path) -> list[tuple[str, str]]:
    # deferred: imports torch, transformers; imports torch
    from .api import load_model
    from .infer.chat import ChatSession
    from .infer.sampling import SamplingConfig
    from .families import load_tokenizer

    model = load_model(model_dir, adapter=adapter)
    session = ChatSession(model, load_tokenizer(tok_dir), sampling=SamplingConfig(temperature=0.0, max_new_tokens=64))
    turns = []
    for question in QUESTIONS:
        session.clear()  # each identity question on its own, as the data teaches them
        reply = session.chat(question).content
        say(f"user: {question}")
        say(f"assistant: {reply}")
        turns.append((question, reply))
    return turns


def run_quickstart(opts: QuickstartOptions) -> dict:
    """Run every step; returns a summary (paths, final loss, chat turns, seconds)."""
    # deferred: imports torch, transformers; imports peft, torch, transformers
    from .export import export_model
    from .train import run_training

    started = time.time()
    prepare_folder(opts.out)
    step(1, "data and tokenizer")
    data_file = write_dataset(opts.out, opts.name, opts.author)
    tok, tok_dir = make_tokenizer(opts.out, data_file, opts.tokenizer)
    step(2, f"glmtune data check {data_file}")
    check_data(data_file, tok)
    step(3, "base model")
    base = make_base_model(opts.out, tok, tok_dir, opts.seed)
    step(4, f"glmtune train ({opts.method}, {opts.steps} steps)")
    config_file = opts.out / "train.yaml"

    config_file.write_text(yaml.safe_dump(train_config(opts, base, data_file), sort_keys=False, allow_unicode=True))
    result = run_training(load_config(config_file))
    say(f"loss curve: {result.output_dir / 'loss.png'}")
    say(f"training log: {result.output_dir / 'trainer_log.jsonl'}")
    step(5, f"glmtune chat --model {result.final_dir} (scripted)")
    adapter = result.final_dir if opts.method == "lora" else None
    model_dir = base if adapter else result.final_dir
    turns = scripted_chat(model_dir, adapter, tok_dir)
    step(6, "glmtune export")
    exported = export_model(model_dir, opts.out / "export", adapter=adapter, layout="native")
    say(f"standalone model ({exported.num_parameters / 1e6:.1f}M parameters): {exported.out_dir}")
    say(f"  files: {', '.join(exported.files)}")
    seconds = time.time() - started
    say(f"\nquickstart done in {seconds:.0f}s. Talk to it: glmtune chat --model {exported.out_dir}")
    return {"final_dir": result.final_dir, "loss": result.final_loss, "turns": turns,
            "export_dir": exported.out_dir, "seconds": seconds}


if __name__ == "__main__":
    sys.exit(run_quickstart(QuickstartOptions()) and 0)
