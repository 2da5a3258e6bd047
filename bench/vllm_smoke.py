"""Smoke test of a running OpenAI-compatible server for a glmtune export (vLLM, SGLang, or `glmtune serve`).

UNTESTED against vLLM/SGLang here (no GPU on the machine it was written on); checked against `glmtune serve`.
Start a server (scripts/serve-vllm.sh), then:

    python bench/vllm_smoke.py --url http://127.0.0.1:8000/v1 [--model NAME] [--no-tools]

Sends, with the official ``openai`` client: a plain request (a non-empty answer, with no role or
special tokens leaking into it), and a request offering a weather tool whose question needs it, plain and
streamed: the reply must be a call of ``get_weather`` whose arguments are a JSON object (what the tool
parser plugin reads out of the family's syntax), and the streamed call must equal the non-streamed one
(greedy). A model that answers the tool question in words fails the check: use a chat model (GLM-4-9B-chat,
ChatGLM3-6B, or a fine-tune of one) with ``--no-tools`` off. Prints one line per check; exit status 1 on
a failure.
"""

from __future__ import annotations

import argparse
import json
import sys

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                   "required": ["city"]}}}
QUESTION = "What is the weather like in Beijing right now? Use the tool."
LEAKS = ("<|user|>", "<|assistant|>", "<|observation|>", "<|system|>", "<|endoftext|>", "[gMASK]", "<sop>")


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return ok


def plain(client, model: str) -> bool:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                           max_tokens=64, temperature=0)
    text = reply.choices[0].message.content or ""
    leaked = [t for t in LEAKS if t in text]
    return check("plain", bool(text.strip()) and not leaked and reply.choices[0].message.tool_calls in (None, []),
                 f"finish={reply.choices[0].finish_reason} leaked={leaked} text={text[:80]!r}")


def streamed_call(client, model: str) -> tuple[str | None, str, str]:
    """(name, arguments, content) of a streamed reply, accumulated by index as the openai client does."""
    name, arguments, content = None, "", ""
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                            tools=[WEATHER], max_tokens=128, temperature=0, stream=True)
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            name = (call.function and call.function.name) or name
            arguments += (call.function and call.function.arguments) or ""
    return name, arguments, content


def tools(client, model: str) -> bool:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                           tools=[WEATHER], max_tokens=128, temperature=0)
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    try:
        arguments = json.loads(calls[0].function.arguments) if calls else None
    except json.JSONDecodeError:
        arguments = None
    ok = check("tool call", len(calls) == 1 and calls[0].function.name == "get_weather"
               and isinstance(arguments, dict) and choice.finish_reason == "tool_calls",
               f"finish={choice.finish_reason} calls={[(c.function.name, c.function.arguments) for c in calls]} "
               f"content={(choice.message.content or '')[:80]!r}")
    name, streamed_arguments, content = streamed_call(client, model)
    try:
        same = name == "get_weather" and json.loads(streamed_arguments) == arguments
    except json.JSONDecodeError:
        same = False
    return check("tool call, streamed", same,
                 f"name={name} arguments={streamed_arguments!r} content={content[:80]!r}") and ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 base URL")
    parser.add_argument("--model", help="served model name (default: the first of /v1/models)")
    parser.add_argument("--api-key", default="none", help="the server's API key, if it wants one")
    parser.add_argument("--no-tools", action="store_true", help="only the plain request (a base model)")
    args = parser.parse_args(argv)
    from openai import OpenAI  # deferred: only this script needs the client

    client = OpenAI(base_url=args.url, api_key=args.api_key)
    model = args.model or client.models.list().data[0].id
    print(f"server {args.url}, model {model}")
    ok = plain(client, model)
    if not args.no_tools:
        ok = tools(client, model) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
