"""glmtune's vLLM tool-call parser plugin (issue 12, serving engines), without vLLM.

The pure helpers read replies as the families' own parse_reply does (round trips through each family's
render_tool_call); a small stand-in ``vllm`` package, mirroring the few vLLM classes the plugin uses, checks
that loading the plugin file (as ``--tool-parser-plugin`` does) registers both parser names and that the
parsers answer vLLM's calls (non-streaming and streaming, through vLLM's finish-chunk check).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from glmtune.families import FAMILIES
from glmtune.families.base import FamilyError
from glmtune.serving import vllm_tool_parser as plugin

ARGS = {"city": "北京", "days": 3, "units": "metric"}
PARSE_OF = {"chatglm3": plugin.parse_chatglm3, "glm4": plugin.parse_glm4, "glm4-0414": plugin.parse_glm4}


# -- the pure helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(PARSE_OF))
def test_a_rendered_call_parses_back(family):
    text = FAMILIES[family].render_tool_call("get_weather", ARGS)
    content, calls = PARSE_OF[family](text)
    assert content == ""
    assert [c["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == ARGS
    assert "北京" in calls[0]["arguments"]  # as the model wrote it, not \\u escapes
    assert plugin.parser_name(family) in plugin.PARSERS


def test_plain_text_is_content():
    assert plugin.parse_chatglm3("\n你好，我是 ChatGLM3。") == ("你好，我是 ChatGLM3。", [])
    assert plugin.parse_glm4("\nHello there.\nSecond line.") == ("Hello there.\nSecond line.", [])
    assert plugin.parse_glm4("Result:\n{\"a\": 1}") == ("Result:\n{\"a\": 1}", [])  # not a tool name


def test_a_malformed_call_stays_content():
    assert plugin.parse_glm4('get_weather\n{"city": "Paris"') == ('get_weather\n{"city": "Paris"', [])
    body = "```python\ntool_call(city=Paris)\n```"  # a name, not a literal: never evaluated
    assert plugin.parse_chatglm3(f"get_weather\n{body}") == (body, [])


def test_chatglm2_has_no_parser():
    with pytest.raises(FamilyError, match="chatglm2.*no tool-call parser"):
        plugin.parser_name("chatglm2")


def test_the_module_imports_without_vllm():
    assert plugin.VLLM is None and "vllm" not in sys.modules


# -- a stand-in vLLM -------------------------------------------------------------------------------------
class ToolParser:
    def __init__(self, tokenizer):
        self.prev_tool_call_arr: list[dict] = []
        self.current_tool_id = -1
        self.current_tool_name_sent = False
        self.streamed_args_for_tool: list[str] = []
        self.model_tokenizer = tokenizer


class ToolParserManager:
    tool_parsers: dict[str, type] = {}

    @classmethod
    def register_module(cls, name=None, force=True, module=None):
        def register(module):
            assert issubclass(module, ToolParser)
            for n in [name] if isinstance(name, str) else name or [module.__name__]:
                cls.tool_parsers[n] = module
            return module
        return register(module) if module is not None else register


@dataclass
class FunctionCall:
    name: str
    arguments: str


@dataclass
class ToolCall:
    function: FunctionCall
    type: str = "function"
    id: str = "chatcmpl-tool-0"


@dataclass
class DeltaFunctionCall:
    name: str | None = None
    arguments: str | None = None


@dataclass
class DeltaToolCall:
    index: int
    id: str | None = None
    type: str | None = None
    function: DeltaFunctionCall | None = None


@dataclass
class DeltaMessage:
    content: str | None = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)


@dataclass
class ExtractedToolCallInformation:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None = None


LAYOUTS = {  # vLLM moved its tool parsers in late 2025; the plugin takes either
    "new": ("vllm.tool_parsers.abstract_tool_parser", "vllm.entrypoints.openai.engine.protocol"),
    "old": ("vllm.entrypoints.openai.tool_parsers.abstract_tool_parser", "vllm.entrypoints.openai.protocol"),
}


@pytest.fixture(params=sorted(LAYOUTS))
def vllm_plugin(request, monkeypatch):
    """The plugin file loaded by path (as vLLM's --tool-parser-plugin does) over a stand-in vllm package."""
    ToolParserManager.tool_parsers = {}
    parser_module, protocol_module = LAYOUTS[request.param]
    modules = {}
    for name in (parser_module, protocol_module):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    modules[parser_module].__dict__.update(ToolParser=ToolParser, ToolParserManager=ToolParserManager)
    for cls in (FunctionCall, ToolCall, DeltaFunctionCall, DeltaToolCall, DeltaMessage, ExtractedToolCallInformation):
        setattr(modules[protocol_module], cls.__name__, cls)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("vllm_tool_parser", plugin.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tokenizer:
    eos_token_id = 102

    def get_vocab(self):
        return {"<|user|>": 100, "<|observation|>": 101, "<|endoftext|>": 102, "hello": 7}


@dataclass
class Request:
    tools: list[dict[str, Any]] | None = None


WEATHER = Request(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])


def test_loading_the_plugin_registers_both_names(vllm_plugin):
    parsers = ToolParserManager.tool_parsers
    assert {"glmtune-chatglm3", "glmtune-glm4", "glmtune-glm4-0414"} <= set(parsers)
    assert all(issubclass(cls, ToolParser) for cls in parsers.values())
    assert parsers["glmtune-glm4"].parse("x\n{}")[1][0]["name"] == "x"


@pytest.mark.parametrize("family", sorted(PARSE_OF))
def test_extract_tool_calls(vllm_plugin, family):
    parser = ToolParserManager.tool_parsers[plugin.parser_name(family)](Tokenizer())
    info = parser.extract_tool_calls(FAMILIES[family].render_tool_call("get_weather", ARGS), WEATHER)
    assert info.tools_called and info.content is None
    assert info.tool_calls[0].function.name == "get_weather"
    assert json.loads(info.tool_calls[0].function.arguments) == ARGS

    plain = parser.extract_tool_calls("\nIt is sunny.", WEATHER)
    assert (plain.tools_called, plain.tool_calls, plain.content) == (False, [], "It is sunny.")
    # A call of a tool the request does not offer is the reply's text, as the official parser reads it.
    other = parser.extract_tool_calls(FAMILIES[family].render_tool_call("rm_rf", {}), WEATHER)
    assert not other.tools_called and other.content.startswith("rm_rf\n")


def finish_check(parser, delta):
    """vLLM's serving_chat at the finish chunk: a delta whose first call has arguments is replaced by
    the arguments not yet streamed (expected from prev_tool_call_arr minus streamed_args_for_tool)."""
    if not (delta and delta.tool_calls and delta.tool_calls[0].function
            and delta.tool_calls[0].function.arguments is not None):
        return delta
    index = len(parser.prev_tool_call_arr) - 1 if parser.prev_tool_call_arr else 0
    expected = json.dumps(parser.prev_tool_call_arr[index].get("arguments", {}), ensure_ascii=False)
    actual = parser.streamed_args_for_tool[index]
    latest = len(delta.tool_calls[0].function.arguments)
    actual = actual[:-latest] if latest else actual
    remaining = expected.replace(actual, "", 1)
    return DeltaMessage(tool_calls=[DeltaToolCall(index=index, function=DeltaFunctionCall(arguments=remaining))])


def stream(parser, text: str, chunk: int, request=WEATHER):
    """Feed ``text`` in ``chunk``-character deltas, then the stop token (chunk 0: all at once, with the
    stop token), and accumulate the deltas as the openai client does."""
    pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)] if chunk else []
    steps = [(p, [7]) for p in pieces] + [("" if chunk else text, [101])]
    content, calls, previous = "", {}, ""
    for n, (piece, ids) in enumerate(steps):
        delta = parser.extract_tool_calls_streaming(previous, previous + piece, piece, [], [], ids, request)
        previous += piece
        if n == len(steps) - 1:
            delta = finish_check(parser, delta)
        for call in (delta.tool_calls if delta else []):
            acc = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            acc["id"] = call.id or acc["id"]
            acc["name"] = (call.function and call.function.name) or acc["name"]
            acc["arguments"] += (call.function and call.function.arguments) or ""
        content += (delta.content or "") if delta else ""
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("chunk", [1, 4, 0])
@pytest.mark.parametrize("family", sorted(PARSE_OF))
def test_streaming_gives_the_same_call_and_content(vllm_plugin, family, chunk):
    cls = ToolParserManager.tool_parsers[plugin.parser_name(family)]
    content, calls = stream(cls(Tokenizer()), FAMILIES[family].render_tool_call("get_weather", ARGS), chunk)
    assert content == ""
    assert len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == ARGS

    for reply, expected in [("\nIt is sunny.\nTake a hat.", "It is sunny.\nTake a hat."),
                            ("\nYes", "Yes"),  # held back as a possible tool name, released at the stop token
                            ('\nget_weather\n{"city": "Par', None)]:  # malformed: kept as content
        content, calls = stream(cls(Tokenizer()), reply, chunk)
        assert calls == []
        assert content == (expected or PARSE_OF[family](reply)[0])


def test_plain_text_streams_before_the_reply_ends(vllm_plugin):
    parser = ToolParserManager.tool_parsers["glmtune-glm4"](Tokenizer())
    first = parser.extract_tool_calls_streaming("", "\nThe", "\nThe", [], [], [7], WEATHER)
    assert first is None  # one word: may still be a tool name
    second = parser.extract_tool_calls_streaming("\nThe", "\nThe weather", " weather", [], [], [7], WEATHER)
    assert second.content == "The weather" and not second.tool_calls


# -- the chat template an engine gets --------------------------------------------------------------------
THUDM_STYLE = ("[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>tools"
               "{% endif %}<|{{ item['role'] }}|>\n{{ item['content'] }}{% endfor %}"
               "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_template_that_ignores_request_tools_is_found():
    """THUDM's GLM-4 template reads tools only from a message's "tools" key: engines pass tools=, which it
    drops, so the served model never sees them; glmtune's GLM-4 template renders them."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    from glmtune.serving.templates import GLM4_TEMPLATE, template_renders_tools

    tok.chat_template = THUDM_STYLE
    assert not template_renders_tools(tok)
    tok.chat_template = GLM4_TEMPLATE
    assert template_renders_tools(tok)
    tok.chat_template = "{{ raise_exception('no tools here') }}"
    assert not template_renders_tools(tok)


def test_exports_get_a_template_that_shows_the_tools(fixtures, tmp_path):
    """Exports carry a template that renders tools= (GLM-4's: glmtune's, not THUDM's, which ignores them), so
    engines need no --chat-template; a folder still holding THUDM's GLM-4 template gets glmtune's from the scripts."""
    import json

    from transformers import AutoTokenizer

    from glmtune.export import export_model
    from glmtune.serving.templates import GLM4_TEMPLATE, engine_chat_template, template_renders_tools

    for name in ("glm4-tiny", "chatglm3-tiny"):
        export_model(fixtures / name, tmp_path / name)
        assert template_renders_tools(AutoTokenizer.from_pretrained(tmp_path / name)), name
        assert engine_chat_template(str(tmp_path / name)) == ""
    config = tmp_path / "glm4-tiny" / "tokenizer_config.json"
    thudm = json.loads((fixtures / "glm4-tiny" / "tokenizer_config.json").read_text())["chat_template"]
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": thudm}))
    assert engine_chat_template(str(tmp_path / "glm4-tiny")) == GLM4_TEMPLATE
