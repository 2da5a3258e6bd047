"""The OpenAI-compatible server on the tiny trained chat model, bound to 127.0.0.1 on a free port."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from glmtune.infer.sampling import SamplingConfig
from glmtune.infer.server import make_server
from test_infer_trained import IDENTITY, OBSERVATION, TOOLS, WEATHER, trained_chatbot


@pytest.fixture(scope="module")
def base_url():
    _, model, tok = trained_chatbot()
    server = make_server(model, tok, host="127.0.0.1", port=0, name="ziggy",
                         defaults=SamplingConfig(temperature=0, max_new_tokens=48))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def post(url: str, body: dict, timeout: float = 60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def chat(base_url, body):
    with post(base_url + "/v1/chat/completions", body) as resp:
        return json.loads(resp.read())


def sse_events(base_url, body) -> list:
    with post(base_url + "/v1/chat/completions", {**body, "stream": True}) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode() for line in resp.read().splitlines() if line.strip()]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_models(base_url):
    with urllib.request.urlopen(base_url + "/v1/models", timeout=10) as resp:
        data = json.loads(resp.read())
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == ["ziggy"]


def test_completion_with_history(base_url):
    out = chat(base_url, {"model": "ziggy", "messages": [{"role": "user", "content": "who are you"}]})
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": IDENTITY}
    assert choice["finish_reason"] == "stop" and out["object"] == "chat.completion"
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    multi = chat(base_url, {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"},
                                         {"role": "user", "content": "ping again"}]})
    assert multi["choices"][0]["message"]["content"] == "pong pong"


def test_streaming_matches_plain(base_url):
    events = sse_events(base_url, {"messages": [{"role": "user", "content": "who are you"}]})
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == IDENTITY and events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_tools_round_trip(base_url):
    tools = [{"type": "function", "function": t} for t in TOOLS]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    out = chat(base_url, {"messages": messages, "tools": tools})
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # The tool's result goes back as an observation; the model answers with it.
    messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": OBSERVATION}]
    final = chat(base_url, {"messages": messages, "tools": tools})
    assert final["choices"][0]["message"]["content"] == WEATHER
    streamed = sse_events(base_url, {"messages": messages[:1], "tools": tools})
    deltas = [e["choices"][0]["delta"] for e in streamed]
    assert [d["tool_calls"][0]["function"]["name"] for d in deltas if "tool_calls" in d] == ["get_weather"]
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("body, fragment", [
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "'temperature' must be a number"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 2}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "last message"),
])
def test_bad_requests_get_400(base_url, body, fragment):
    with pytest.raises(urllib.error.HTTPError) as info:
        post(base_url + "/v1/chat/completions", body)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_unknown_route_404(base_url):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base_url + "/v1/completions", timeout=10)
    assert info.value.code == 404


def test_serve_command_starts_and_answers():
    """`glmtune serve --port 0` as a real process: it prints its address and answers, then stops on SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    folder = trained_chatbot()[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "glmtune", "serve", "--model", str(folder), "--port", "0",
                             "--temperature", "0", "--name", "ziggy"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()  # blocks until the server is listening (or the process died)
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("at ", 1)[1].split(" ", 1)[0].rsplit("/v1", 1)[0]
        out = chat(url, {"messages": [{"role": "user", "content": "who are you"}]})
        assert out["model"] == "ziggy" and out["choices"][0]["message"]["content"] == IDENTITY
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
