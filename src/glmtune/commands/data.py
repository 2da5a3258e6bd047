"""``glmtune data check|preview|encode``: validate, inspect and encode data files."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..data.chat_format import prompt_history
from ..data.family_format import build_prompt
from ..data.config import DataConfig
from ..data.encode import encode_sample
from ..data.errors import DataError
from ..data.process import load_conversations, merge_processed, process_source
from ..data.readers import data_files
from ..data.by_name import named_sources
from ..data.registry import Source
from ..errors import UserError


def _common(p: argparse.ArgumentParser, lengths_default: int | None) -> None:
    p.add_argument("--model", required=True, help="model folder (for its tokenizer), or a tokenizer.model file")
    p.add_argument("--format", default="auto",
                   help="record format: auto (by keys), chatglm3, alpaca, base, openai, sharegpt, columns")
    p.add_argument("--columns", default="",
                   help="column mapping src=dst[,src=dst] (e.g. content=user,summary=assistant)")
    p.add_argument("--max-input-length", type=int, default=lengths_default, help="prompt budget in tokens")
    p.add_argument("--max-output-length", type=int, default=lengths_default, help="answer budget in tokens")
    p.add_argument("--max-seq-length", type=int, default=None, help="total length cap (replaces input+output+1)")
    p.add_argument("--family", default=None, help="model family (chatglm2, chatglm3, glm4, glm4-0414; default: "
                   "detected from the model folder)")
    p.add_argument("--combine", default=None, choices=("true", "false"),
                   help="GLM-4's official combine option (default true): learn only the last answer")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check, preview or encode data files",
                       description="Validate data files, show how they are tokenized, or encode them.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = dsub.add_parser("check", help="validate every record and summarise",
                        description="List every problem as FILE:LINE: problem (expected ...), then a summary. "
                                    "Exit status 1 if any record is invalid.")
    c.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="data files, or folders whose data files (train.json, dev.json, ...) are all checked")
    _common(c, 512)
    c.add_argument("--dataset", metavar="NAME[,NAME...]",
                   help="check registry datasets by name (name or name:ratio), as LLaMA-Factory's --dataset")
    c.add_argument("--dataset-dir", default="data",
                   help="folder of the datasets and of dataset_info.json (default: data, as LLaMA-Factory); without "
                        "a dataset_info.json there, names come from the bundled registry of public datasets")
    c.add_argument("--registry", default=None, help="registry file to read the names from (glmtune's or a "
                                                    "LLaMA-Factory dataset_info.json; a relative path is looked for "
                                                    "in --dataset-dir first, then here)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=run_check)

    v = dsub.add_parser("preview", help="show token / id / label of the first records",
                        description="The official demo's sanity check: decoded token, token id, label id.")
    v.add_argument("input", metavar="INPUT", help="a data file (or a folder holding exactly one)")
    v.add_argument("-n", type=int, default=1, help="number of records (default 1)")
    _common(v, None)
    v.set_defaults(func=run_preview)

    e = dsub.add_parser("encode", help="write input_ids/labels as JSON lines",
                        description="One JSON line per record: {\"input_ids\": [...], \"labels\": [...]}, or "
                                    "with --for-generation {\"input_ids\": [...]} of the generation prompt.")
    e.add_argument("input", metavar="INPUT", help="a data file (or a folder holding exactly one)")
    _common(e, None)
    e.add_argument("--for-generation", action="store_true",
                   help="encode the generation prompt ending with <|assistant|>: a conversation ending with a user "
                        "or observation turn as it is (no assistant turn needed); trailing assistant answers are "
                        "left out (a trailing tool call is kept)")
    e.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    e.set_defaults(func=run_encode)


def _columns(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        src, eq, dst = part.partition("=")
        if not eq or not src or not dst:
            raise DataError(f"--columns: {part!r} (expected src=dst, e.g. content=user,summary=assistant)")
        out[src.strip()] = dst.strip()
    return out


def _config(args: argparse.Namespace, **extra):
    return DataConfig(format=args.format, columns=_columns(args.columns), max_input_length=args.max_input_length,
                      max_output_length=args.max_output_length, max_seq_length=args.max_seq_length,
                      combine=None if args.combine is None else args.combine == "true", cache=False, **extra)


def _one_file(path: str):
    """The file ``path`` names: itself, or the only data file of a folder (else an error naming the choices)."""
    files = data_files(path)
    if len(files) > 1:
        shown = ", ".join(str(f) for f in files)
        raise DataError(f"{path}: folder holds {len(files)} data files; pass one of them ({shown})")
    return files[0]


def _tokenizer(model: str, family: str | None = None):
    """The tokenizer of ``--model``; a path that does not exist (e.g. a hub id) gets the no-download advice."""

    # deferred: imports torch; `--help` stays fast
    from ..infer.loading import hub_id_hint
    from ..families import load_tokenizer

    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"--model {model!r}: no such folder or file. glmtune does not download models: pass a local "
                        f"model folder (or its tokenizer.model){hub_id_hint(model)}")
    return load_tokenizer(path, family=family)


def _load(args: argparse.Namespace, path: str, prompt: bool = False):
    """(config, tokenizer, converted records, problems) of one input file (or a folder holding one)."""
    cfg = _config(args)
    tok = _tokenizer(args.model, args.family)
    return cfg, tok, *load_conversations(_one_file(path), cfg, prompt=prompt)


def _print_problems(problems) -> None:
    for p in problems:
        print(p, file=sys.stderr)


def run_check(args: argparse.Namespace) -> int:
    cfg, tok = _config(args), _tokenizer(args.model, args.family)
    sources = [Source(f) for name in args.inputs for f in data_files(name)] + _dataset_sources(args)
    if not sources:
        raise UserError("glmtune data check needs data files or --dataset NAME[,NAME...]")
    result = merge_processed([process_source(source, cfg, tok) for source in sources])
    _print_problems(sorted(result.problems + result.warnings, key=lambda p: (p.file, p.line or 0)))
    report = result.report
    if args.json:
        print(json.dumps({**asdict(report), "invalid": len(result.problems)}, ensure_ascii=False, indent=2))
        # (warnings are counted by kind in the report's "warnings")
    else:
        report.examples = []  # every problem is already printed above
        print(report.format("data"))
        limits = f"chat cap {cfg.chat_length} tokens" if cfg.chat_length else "no length limit"
        print(f"  would be truncated at these lengths ({limits}): {report.truncated}")
        n = len(result.problems)
        w = len(result.warnings)
        print((f"{n} invalid record{'s' if n != 1 else ''}" if n else "all records are valid")
              + (f", {w} warning{'s' if w != 1 else ''}" if w else ""))
    return 1 if result.problems else 0


def _dataset_sources(args: argparse.Namespace) -> list:
    """Sources of ``--dataset`` names: from --registry, else DATASET_DIR/dataset_info.json, else bundled."""
    return named_sources(args.dataset, args.dataset_dir, args.registry)


def run_preview(args: argparse.Namespace) -> int:
    cfg, tok, convs, problems = _load(args, args.input)
    _print_problems(problems)
    for conv in convs[: args.n]:
        sample = encode_sample(conv, tok, cfg)
        print(f"--> {conv.where} ({len(sample.input_ids)} tokens"
              + (", truncated" if sample.truncated else "") + ")")
        for i, label in zip(sample.input_ids, sample.labels):
            text = tok.index_special_tokens[i] if i in tok.index_special_tokens else tok.decode([i])
            text = text or tok.convert_ids_to_tokens([i])[0]  # "▁" decodes to nothing; show the piece
            print(f"{text!r:>20}: {i} -> {label}")
    return 1 if problems else 0


def _refuse_input_as_output(output: str, inputs: list[str], option: str = "-o") -> None:
    """An output path that is one of the inputs (after symlinks) would destroy the user's data: refuse it."""


    target = Path(output).expanduser().resolve()
    for name in inputs:
        path = Path(name).expanduser()
        for f in [path] + (sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []):
            if f.resolve() == target or (target.exists() and f.exists() and target.samefile(f)):
                raise UserError(f"{option} {output}: is the input {name}; writing there would overwrite your data "
                                "(fix: choose another output file)")


def run_encode(args: argparse.Namespace) -> int:
    if args.output != "-":
        _refuse_input_as_output(args.output, [args.input, args.model])
    cfg, tok, convs, problems = _load(args, args.input, prompt=args.for_generation)
    if problems:
        _print_problems(problems)
        print(f"glmtune: error: {len(problems)} invalid record(s) in {args.input}; nothing written", file=sys.stderr)
        return 1
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for conv in convs:
            if args.for_generation:
                ids = build_prompt(prompt_history(conv), tok)
                if conv.kind == "base" and cfg.max_input_length:
                    ids = ids[: cfg.max_input_length]  # the official base demo's max_source_length
                row = {"input_ids": ids}
            else:
                sample = encode_sample(conv, tok, cfg)
                if sample.dropped:
                    print(f"{conv.where}: warning: no learned token left after truncation", file=sys.stderr)
                row = {"input_ids": sample.input_ids, "labels": sample.labels}
            out.write(json.dumps(row) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
