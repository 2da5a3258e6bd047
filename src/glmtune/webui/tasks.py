"""Data check and preview, evaluation and export for the web UI: thin calls into the CLI's functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.by_name import all_conversations, named_sources
from ..data.config import DataConfig
from ..errors import UserError
from ..train.layout import FINAL_DIR, checkpoints
from .runs import read_run_config
from ..data.encode import encode_sample
from ..data.process import merge_processed, process_source, load_conversations
from ..data.readers import data_files
from ..data.registry import Source
from ..export import export_model
from ..infer.evaluate import build_samples, evaluate
from ..families import load_tokenizer

PREVIEW_HEADERS = ["position", "token", "id", "label"]


def data_config(fmt: str, max_input_length: int | None, max_output_length: int | None) -> DataConfig:
    return DataConfig(format=fmt or "auto", max_input_length=int(max_input_length) if max_input_length else None,
                      max_output_length=int(max_output_length) if max_output_length else None, cache=False)


def _files(paths: list[str]) -> list[Path]:
    if not paths:
        raise UserError("no data file: pick or upload one, or type its path")
    return [f for name in paths for f in data_files(name)]


@dataclass
class CheckResult:
    problems: list[list[str]]
    """[where (FILE:LINE), problem and fix] per invalid record."""
    summary: str
    full_lengths: list[int]
    """Sample lengths before truncation (the histogram's data)."""


def check_data(paths: list[str], tokenizer_path: str, cfg: DataConfig, dataset: str | list = "",
               dataset_dir: str | None = None) -> CheckResult:
    """``glmtune data check`` (files and/or ``--dataset`` names): every problem with its file:line, the report,
    and the length distribution."""
    named = named_sources(dataset, dataset_dir)
    sources = [Source(f) for f in _files(paths)] if paths or not named else []
    tok = load_tokenizer(tokenizer_path)
    result = merge_processed([process_source(source, cfg, tok) for source in sources + named])
    rows = [[_where(p), _what(p)] for p in result.problems]
    report = result.report
    report.examples = []  # every problem is in the table
    n = len(result.problems)
    summary = report.format("data") + "\n" + (f"{n} invalid record{'s' if n != 1 else ''}" if n
                                             else "all records are valid")
    return CheckResult(rows, summary, [int(x) for x in getattr(result, "full_lengths", [])])


def _where(problem) -> str:
    text = str(problem)
    file, line = getattr(problem, "file", None), getattr(problem, "line", None)
    return f"{file}:{line}" if file and line else text.split(": ", 1)[0]


def _what(problem) -> str:
    text, where = str(problem), _where(problem)
    return text[len(where) + 2:] if text.startswith(where + ": ") else text


def length_histogram(lengths: list[int], cap: int | None):
    """A matplotlib Figure of sample lengths, with the truncation cap marked (None when there is no data)."""
    if not lengths:
        return None
    import matplotlib  # heavy dependency: only when a plot is drawn

    matplotlib.use("Agg")
    # deferred: matplotlib is heavy; only drawing a plot needs it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.add_subplot()
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="tab:blue", alpha=0.8)
    if cap and cap <= 1.5 * max(lengths):
        ax.axvline(cap, color="tab:red", linestyle="--", label=f"length cap {cap}")
        ax.legend(fontsize=8)
    elif cap:  # a far-away cap would squash the histogram into its first bins
        ax.set_title(f"all samples well below the length cap ({cap} tokens)", fontsize=9)
    ax.set_xlabel("tokens per sample (before truncation)")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def preview_record(path: str, tokenizer_path: str, cfg: DataConfig, index: int) -> tuple[str, list[list]]:
    """``glmtune data preview`` for record ``index`` (0-based): a header line and (position, token, id, label) rows."""
    files = _files([path])
    tok = load_tokenizer(tokenizer_path)
    convs, problems = load_conversations(files[0], cfg)
    if not convs:
        raise UserError(f"{files[0]}: no valid record to preview ({len(problems)} invalid; run the data check)")
    if not 0 <= int(index) < len(convs):
        raise UserError(f"record {index}: out of range; {files[0]} has {len(convs)} valid records "
                        f"(0..{len(convs) - 1})")
    conv = convs[int(index)]
    sample = encode_sample(conv, tok, cfg)
    rows = []
    for pos, (i, label) in enumerate(zip(sample.input_ids, sample.labels)):
        text = tok.index_special_tokens[i] if i in tok.index_special_tokens else tok.decode([i])
        rows.append([pos, text or tok.convert_ids_to_tokens([i])[0], i, label])
    head = f"{conv.where}: {len(sample.input_ids)} tokens" + (" (truncated)" if sample.truncated else "") \
        + f", {sum(1 for x in sample.labels if x != -100)} learned (label -100 = not learned)"
    return head, rows


def run_weights(run_dir: Path, which: str = FINAL_DIR) -> dict:
    """``model`` / ``adapter`` / ``prefix`` paths that load a run's result (``final`` or ``checkpoint-N``)."""
    run_dir = Path(run_dir)
    folder = run_dir / which
    if not folder.is_dir():
        found = ", ".join([FINAL_DIR] * (run_dir / FINAL_DIR).is_dir() + [p.name for _, p in checkpoints(run_dir)])
        raise UserError(f"{folder}: not found; this run has: {found or 'no saved result yet'}")
    config = read_run_config(run_dir)
    base = (config.get("model") or {}).get("path", "")
    method = (config.get("method") or {}).get("name", "lora")
    if method == "lora":
        return {"model": base, "adapter": str(folder), "prefix": None}
    if method == "ptuning":
        return {"model": base, "adapter": None, "prefix": str(folder)}
    return {"model": str(folder), "adapter": None, "prefix": None}


def run_results(run_dir: Path) -> list[str]:
    """Loadable results of a run, best first: ``final`` then checkpoints newest first."""
    run_dir = Path(run_dir)
    found = [FINAL_DIR] if (run_dir / FINAL_DIR).is_dir() else []
    return found + [p.name for _, p in reversed(checkpoints(run_dir))]


def evaluate_file(model, tok, data_path: str, fmt: str, settings,
                  progress: Callable[[int, int], None] | None = None, dataset: str | list = "",
                  dataset_dir: str | None = None):
    """``glmtune eval`` on a loaded model (a file, or ``--dataset`` names when given): (metrics, prediction rows).
    ``progress(done, total)`` per batch."""
    sources = named_sources(dataset, dataset_dir) or [Source(f) for f in _files([data_path])[:1]]
    conversations = all_conversations(sources, DataConfig(format=fmt or "auto", cache=False))
    total = len(build_samples(conversations, tok, settings))
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    result = evaluate(model, tok, conversations, settings, progress=step)
    rows = [[r["source"], r["reference"], r["prediction"], round(r["scores"].get("rouge-l", 0.0), 2)
             if isinstance(r.get("scores"), dict) else ""] for r in result.predictions]
    return result, rows


def export(weights: dict, out_dir: str, layout: str, dtype: str | None) -> str:
    """``glmtune export``: merge (if an adapter) and write; returns a summary naming the folder and files."""
    if not out_dir.strip():
        raise UserError("export folder: empty; type where the standalone model should be written")
    result = export_model(weights["model"], Path(out_dir).expanduser(), adapter=weights.get("adapter"),
                          prefix=weights.get("prefix"), layout=layout, dtype=dtype or None)
    what = f"{weights['model']} + {weights['adapter']} (merged)" if weights.get("adapter") else weights["model"]
    dtype_name = str(result.dtype).replace("torch.", "")
    return (f"exported {what}\n-> {result.out_dir.resolve()} ({result.layout} layout, {dtype_name}, "
            f"{result.num_parameters / 1e6:.1f}M parameters)\nfiles: {', '.join(result.files)}")
