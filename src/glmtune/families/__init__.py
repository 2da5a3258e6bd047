"""Model families: one module each (see :mod:`glmtune.families.base`), found by name, tokenizer or folder.

``FAMILIES`` is the registry (a plain dict). Adding a family means adding its module, one line here,
and its fixtures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..tokenizer import TokenizerError
from .base import Family, FamilyError
from .chatglm2 import FAMILY as CHATGLM2
from .chatglm3 import FAMILY as CHATGLM3
from .glm4 import FAMILY as GLM4
from .glm4_0414 import FAMILY as GLM4_0414

FAMILIES: dict[str, Family] = {
    CHATGLM3.name: CHATGLM3,
    CHATGLM2.name: CHATGLM2,
    GLM4.name: GLM4,
    GLM4_0414.name: GLM4_0414,
}
DEFAULT = CHATGLM3.name


def get_family(name: str) -> Family:
    """The family called ``name``; an unknown name lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}") from None


def family_of(tokenizer) -> Family:
    """The family of a tokenizer object (each family's tokenizer class names its family)."""
    name = getattr(tokenizer, "family_name", None)
    if name is None:
        raise FamilyError(f"{type(tokenizer).__name__} is not a glmtune tokenizer (no family_name); "
                          "load it with glmtune.load_tokenizer")
    return get_family(name)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FamilyError(f"{path}: cannot read ({type(exc).__name__}: {exc}); fix or remove the file") from None
    return data if isinstance(data, dict) else {}


def detect_family(folder: str | os.PathLike, family: str | None = None) -> Family:
    """The family of a model (or tokenizer) folder: ``family`` if given, else what its files say.

    Detection reads ``config.json`` and ``tokenizer_config.json`` (never code). When no family
    recognises the folder, or more than one does, the error says so and asks for ``model.family``.
    """
    if family:
        return get_family(family)
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    config = _read_json(folder / "config.json")
    tok_config = _read_json(folder / "tokenizer_config.json")
    marked = config.get("glmtune_family") or tok_config.get("glmtune_family")
    if isinstance(marked, str):
        return get_family(marked)
    found = [f for f in FAMILIES.values() if f.detect(config, tok_config, folder)]
    if len(found) == 1:
        return found[0]
    known = ", ".join(FAMILIES)
    if not found:
        raise FamilyError(f"{folder}: nothing in config.json / tokenizer_config.json tells which GLM family this "
                          f"is; set model.family (--family) to one of: {known}")
    raise FamilyError(f"{folder}: its files fit several GLM families ({', '.join(f.name for f in found)}); "
                      f"set model.family (--family) to the right one")


def find_tokenizer(*candidates: str | os.PathLike | None, family: str | None = None,
                   hint: str = "pass --tokenizer DIR (the base model's folder)") -> Path:
    """The tokenizer file of the first candidate folder (or file) that holds one.

    ``None`` candidates are skipped, so callers pass ``--tokenizer`` first and then the folders that
    may hold one (model, adapter, prefix). A folder's tokenizer file is its family's (``tokenizer.model``,
    ``tokenizer.json``...).
    """
    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate)
        if path.is_file():
            return path
        if path.is_dir():
            for fam in ([get_family(family)] if family else _candidates(path)):
                for name in (fam.tokenizer_file, *fam.tokenizer_alternates):
                    if (path / name).is_file():
                        return path / name
    shown = ", ".join(str(c) for c in candidates if c is not None)
    files = " or ".join(dict.fromkeys(f.tokenizer_file for f in FAMILIES.values()))
    raise TokenizerError(f"no {files} in {shown} (expected a model folder holding its tokenizer, or the tokenizer "
                         "file itself)" + (f"; {hint}" if hint else ""))


def _candidates(folder: Path) -> list[Family]:
    """The folder's family when its files tell, else every family (the first whose tokenizer file is there wins)."""
    try:
        return [detect_family(folder)]
    except FamilyError:
        if (folder / "config.json").is_file():
            raise
        return list(FAMILIES.values())


def _family_of_file(path: Path) -> Family:
    """A bare tokenizer file: its folder's family when the folder tells, else by the file's own format."""
    try:
        return detect_family(path.parent)
    except FamilyError:
        pass
    kind = tokenizer_format(path)
    matching = [f for f in FAMILIES.values() if f.tokenizer_format == kind]
    return matching[0] if matching else get_family(DEFAULT)


def tokenizer_format(path: Path) -> str:
    """``sentencepiece`` (a protobuf), ``tiktoken`` (base64 token, space, rank a line) or ``hf`` (tokenizer.json)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise FamilyError(f"{path}: cannot read the tokenizer file ({exc})") from None
    if head.lstrip().startswith(b"{"):
        return "hf"
    first = head.split(b"\n", 1)[0].split(b" ")
    if len(first) == 2 and first[1].isdigit():
        return "tiktoken"
    return "sentencepiece"


def load_tokenizer(path: str | os.PathLike, *, family: str | None = None):
    """The tokenizer of a model folder (or a tokenizer file), of the folder's family or the one given.

    A bare tokenizer file whose folder does not tell the family is read by its format: a SentencePiece
    model as ChatGLM3's, a tiktoken rank file as GLM-4's (``family=`` chooses otherwise).
    """
    file = find_tokenizer(path, family=family, hint="")
    fam = get_family(family) if family else _family_of_file(file)
    return fam.load_tokenizer(file)


__all__ = ["FAMILIES", "Family", "FamilyError", "detect_family", "family_of", "find_tokenizer", "get_family",
           "load_tokenizer"]
