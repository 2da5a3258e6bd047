"""GLM-4's prompt format as a Jinja chat template, written for glmtune (not a copy of THUDM's).

It renders the ids of :func:`glmtune.families.glm4_format.build_prompt` (checked on every prompt case of
``fixtures/glm4-encodings.jsonl``) for GLM-4 message dicts (``metadata``, ``tools`` on a message) and,
for serving engines, OpenAI-shaped ones: ``tools=`` of ``apply_chat_template`` becomes the tools
system block, an assistant ``tool_calls`` entry becomes ``<|assistant|>name`` + JSON arguments, a
``tool`` message an ``<|observation|>``. Only ``function`` tools exist here; GLM-4's built-in tools
(python, simple_browser, cogview) raise. Used when a folder ships no template of its own.
"""

from __future__ import annotations

import json

from .glm4_format import FUNCTION_FOOTER, SYSTEM_PROMPT, TOOLS_HEADER


def _lit(text: str) -> str:
    """``text`` as a Jinja string expression (no whitespace control can eat its newlines)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def _template_parts() -> list[str]:
    return [
        "{%- macro tool_block(fns) -%}",
        "<|system|>", _lit("\n" + SYSTEM_PROMPT + TOOLS_HEADER),
        "{%- for t in fns -%}",
        "{%- if t.type is defined and t.type != 'function' -%}"
        "{{ raise_exception('glmtune renders GLM-4 function tools only, not ' ~ t.type) }}{%- endif -%}",
        "{%- set f = t.function if t.function is defined else t -%}",
        _lit("\n## "), "{{ f.name }}", _lit("\n\n"), "{{ f | tojson(indent=4) }}", _lit(FUNCTION_FOOTER),
        "{%- endfor -%}",
        "{%- endmacro -%}",
        "{%- macro text(c) -%}",
        "{%- if c is string -%}{{ c }}{%- elif c -%}{%- for p in c -%}{{ p.text }}{%- endfor -%}{%- endif -%}",
        "{%- endmacro -%}",
        "[gMASK]<sop>",
        "{%- if tools -%}{{ tool_block(tools) }}{%- endif -%}",
        "{%- for m in messages -%}",
        "{%- if m.tools is defined and m.tools is not none -%}{{ tool_block(m.tools) }}{%- endif -%}",
        "{%- set content = text(m.content) -%}",
        "{%- if content -%}",
        "<|{{ 'observation' if m.role in ('tool', 'function') else m.role }}|>{{ m.metadata or '' }}",
        _lit("\n"), "{{ content }}",
        "{%- endif -%}",
        "{%- for c in (m.tool_calls or []) -%}",
        "{%- set f = c.function if c.function is defined else c -%}",
        "<|assistant|>{{ f.name }}", _lit("\n"),
        "{%- if f.arguments is string -%}{{ f.arguments }}{%- else -%}{{ f.arguments | tojson }}{%- endif -%}",
        "{%- endfor -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}",
    ]


CHAT_TEMPLATE = "".join(_template_parts())
