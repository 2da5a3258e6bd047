"""What a model family is: everything that differs between GLM generations, in one record.

A family module (``families/chatglm3.py``, ``families/glm4.py``, ...) builds one :class:`Family`
from its own tokenizer, formats and tool-call syntax; the rest of glmtune asks the family of the
tokenizer or model folder it holds (:func:`glmtune.families.family_of`, :func:`detect_family`)
and never branches on a family's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import GlmtuneError


class FamilyError(GlmtuneError, ValueError):
    """A model family is unknown, cannot be detected, or cannot do what was asked."""


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring). Every callable is a module-level function of the family module."""

    name: str
    """Registry name, as in ``model.family`` (``chatglm3``)."""
    title: str
    """Models it covers, for messages and the README."""
    tokenizer_file: str
    """The tokenizer file a model folder holds (``tokenizer.model``, ``tokenizer.json``)."""
    tokenizer_format: str
    """``sentencepiece``, ``tiktoken`` or ``hf``: how a bare tokenizer file of this family is recognised."""
    load_tokenizer: Callable[[Path], Any]
    """Tokenizer file (or, for folder-based tokenizers, the folder) -> a tokenizer whose ``family_name`` is ``name``."""
    encode_chat: Callable[..., tuple[list[int], list[int]]]
    """``(conversation, tokenizer, *, combine, max_source, max_target) -> (input_ids, labels)``, untruncated
    except where the family's official code truncates piecewise (``max_source``/``max_target``)."""
    encode_base: Callable[..., tuple[list[int], list[int]]]
    """``(context, target, tokenizer, max_source=None, max_target=None) -> (input_ids, labels)``."""
    build_prompt: Callable[[Any, Any], list[int]]
    """``(conversation or messages, tokenizer) -> generation prompt ids`` (ending where the model writes)."""
    parse_reply: Callable[[str], tuple[str, Any]]
    """``decoded reply -> (content, ToolCall | None)``, as the official chat code parses it."""
    render_tool_call: Callable[[str, dict], str]
    """``(name, parameters) -> the reply text the model writes for that call`` (parse_reply's inverse)."""
    template_version: str
    """Changes whenever the family's encodings change (cache keys)."""
    detect: Callable[[dict, dict, Path], bool]
    """``(config.json dict, tokenizer_config.json dict, folder) -> True`` when the folder is this family's."""
    chat_template: Callable[[Any], str] | None = None
    """``tokenizer -> Jinja chat template`` written into exports (None: the export keeps the folder's own)."""
    notes: Callable[[Any], list[tuple[str, str, str]]] | None = None
    """``conversation -> [(problem, fix, kind)]``: where the family's official code reads a record differently
    from what it says (reported by ``data check`` as warnings; the sample still trains as officially)."""
    tokenizer_alternates: tuple[str, ...] = ()
    """Other tokenizer files a folder of this family may hold instead (GLM-4's ``-hf`` folders: ``tokenizer.json``)."""
    rope: str = "base"
    """How a THUDM config's ``rope_ratio`` applies: ``base`` (theta = 10000 * ratio) or ``linear`` (positions / ratio)."""
    piecewise_truncation: bool = False
    """True where the official preprocessing cuts prompt and answer separately (``max_source``/``max_target``,
    ChatGLM2); False: the caller cuts the whole sample to ``max_input + max_output + 1`` (ChatGLM3, GLM-4)."""
    has_tools: bool = True
    """Whether the format can express tools and tool calls (ChatGLM2's cannot)."""
    has_system: bool = True
    """Whether the format has a system role."""
    tools_system: str = ""
    """The system prompt chat uses with tools when the user gives none (ChatGLM3's tool demo has one)."""
    combine_default: bool | None = None
    """GLM-4's ``combine`` fine-tune option default (None: the family has no such option)."""
    shapes: tuple[str, ...] = field(default_factory=tuple)
    """Named shapes (``glmtune.models.shapes``) of this family's real and tiny sizes."""
    description: str = ""
    """One paragraph for ``--help``/README: what a folder must contain, how it is detected."""


def model_names(config: dict, tok_config: dict) -> str:
    """The model names a folder's config.json and tokenizer_config.json give (``THUDM/chatglm2-6b``...), lowercased."""
    return " ".join(str(d.get(k, "")) for d in (config, tok_config) for k in ("_name_or_path", "name_or_path")).lower()
