"""`glmtune serve` against the official ``openai`` client on 127.0.0.1: plain, streaming, tools, stop, errors, load."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import openai
import pytest
import torch

from glmtune import load_model
from glmtune.infer.sampling import SamplingConfig
from glmtune.infer.server import make_server
from test_infer_chat_robust import ScriptedModel
from test_infer_trained import IDENTITY, OBSERVATION, TOOLS, WEATHER, trained_chatbot

KEY = "sk-glmtune-test"
FUNCTIONS = [{"type": "function", "function": t} for t in TOOLS]
WHO = [{"role": "user", "content": "who are you"}]


@contextmanager
def running(model, tok, **options):
    server = make_server(model, tok, host="127.0.0.1", port=0, name="ziggy",
                         defaults=SamplingConfig(temperature=0, max_new_tokens=48), **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def client_for(server, key: str | None = KEY) -> openai.OpenAI:
    host, port = server.server_address
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key or "none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server():
    _, model, tok = trained_chatbot()
    with running(model, tok, api_key=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return client_for(server)


def test_plain_reply_and_models(client):
    out = client.chat.completions.create(model="ziggy", messages=WHO)
    choice = out.choices[0]
    assert choice.message.content == IDENTITY and choice.finish_reason == "stop" and out.model == "ziggy"
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens > 0
    assert [m.id for m in client.models.list()] == ["ziggy"]


def test_streaming_adds_up_to_the_plain_reply(client):
    chunks = list(client.chat.completions.create(model="ziggy", messages=WHO, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == IDENTITY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_tools_round_trip(client):
    messages = [{"role": "user", "content": "weather in Paris?"}]
    out = client.chat.completions.create(model="ziggy", messages=messages, tools=FUNCTIONS)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": OBSERVATION}]
    final = client.chat.completions.create(model="ziggy", messages=messages, tools=FUNCTIONS)
    assert final.choices[0].message.content == WEATHER
    streamed = list(client.chat.completions.create(model="ziggy", messages=messages[:1], tools=FUNCTIONS,
                                                   stream=True))
    calls = [tc for c in streamed for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("get_weather",
                                                                                         {"city": "Paris"})]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stop, expected", [("tiny", "I am Ziggy, a "), (["bot", "Ziggy"], "I am ")])
def test_stop_strings_cut_the_reply_and_end_generation(client, stop, expected):
    full = client.chat.completions.create(model="ziggy", messages=WHO)
    out = client.chat.completions.create(model="ziggy", messages=WHO, stop=stop)
    assert out.choices[0].message.content == expected and out.choices[0].finish_reason == "stop"
    # Generation ended at the stop string, not at the end of the reply.
    assert out.usage.completion_tokens < full.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="ziggy", messages=WHO, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_errors_raise_openai_exceptions(server, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ziggy", messages=WHO, temperature=-1)
    assert info.value.param == "temperature" and ">= 0" in info.value.message
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client.chat.completions.create(model="ziggy", messages=WHO, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="non-empty list"):
        client.chat.completions.create(model="ziggy", messages=[])
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=WHO)
    assert info.value.code == "model_not_found" and "ziggy" in info.value.message
    with pytest.raises(openai.AuthenticationError, match="API key"):
        client_for(server, "wrong").chat.completions.create(model="ziggy", messages=WHO)
    with pytest.raises(openai.AuthenticationError):
        client_for(server, "wrong").models.list()


def _post_and_hold(address, body: dict) -> socket.socket:
    """Send a request and keep the connection open without reading (a client that waits)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def test_full_queue_gets_503_and_disconnects_free_the_rows():
    _, _, tok = trained_chatbot()
    model = ScriptedModel(tok.encode("\npong"), tok.encode("pong")[-1], tok.vocab_size, max_positions=10**7)
    with running(model, tok, max_batch=1, max_queue=1) as srv:
        endless = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 10**6}
        running_one = _post_and_hold(srv.server_address, endless)
        time.sleep(0.3)  # admitted: the one batch slot is taken
        waiting = _post_and_hold(srv.server_address, endless)
        time.sleep(0.3)  # queued: the queue (1) is full
        with pytest.raises(openai.InternalServerError) as info:
            client_for(srv).chat.completions.create(model="ziggy", messages=WHO)
        assert info.value.status_code == 503 and "busy" in info.value.message
        running_one.close()
        waiting.close()
        out = client_for(srv).chat.completions.create(model="ziggy", messages=WHO, max_tokens=4)
        assert out.choices[0].finish_reason == "length"
        steps = srv.state.batcher.steps
        time.sleep(0.3)
        assert srv.state.batcher.steps == steps  # nothing left generating for the closed clients


# -- load: 32 concurrent clients x 4 requests ------------------------------------------------------
PROMPTS = ["who are you", "ping", "tell me about the weather", "what is a test bot"]
LOAD = [{"messages": [{"role": "user", "content": p}], "max_tokens": 24, **sampling}
        for p in PROMPTS for sampling in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 11})]


def _ask(client: openai.OpenAI, index: int) -> tuple[int, str, str, int]:
    out = client.chat.completions.create(model="ziggy", **LOAD[index])
    choice = out.choices[0]
    return index, choice.message.content, choice.finish_reason, out.usage.completion_tokens


# The clients run in their own process: 32 client threads in the server's interpreter would
# compete with it for the GIL and measure that instead of the server.
CLIENTS = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import openai
url, clients, per_client = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = json.loads(sys.stdin.read())
client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
def ask(i):
    out = client.chat.completions.create(model="ziggy", **load[i])
    c = out.choices[0]
    return [i, c.message.content, c.finish_reason, out.usage.completion_tokens]
def one(k):
    return [ask((k * per_client + j) % len(load)) for j in range(per_client)]
ask(0)  # connect and warm up before the clock starts
start = time.perf_counter()
with ThreadPoolExecutor(clients) as pool:
    replies = [r for rs in pool.map(one, range(clients)) for r in rs]
print(json.dumps({"seconds": time.perf_counter() - start, "replies": replies}))
"""


def _load(server, clients: int, per_client: int) -> tuple[float, list]:
    host, port = server.server_address
    done = subprocess.run([sys.executable, "-c", CLIENTS, f"http://{host}:{port}/v1", str(clients), str(per_client)],
                          input=json.dumps(LOAD), capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout)
    return result["seconds"], [tuple(r) for r in result["replies"]]


def test_load_replies_match_alone_and_batching_triples_throughput():
    """32 clients x 4 requests: every reply equals the same request alone; >= 3x the one-at-a-time rate.

    Two servers on one model: max_batch=1 (one request decoded at a time, as the server before
    batching) and max_batch=32. The model is a random tiny one on the trained tokenizer (replies
    run to max_tokens). Along its greedy replies (seed 3) the two likeliest logits differ by at least
    2e-4, far above the float rounding of a padded batch, so batching cannot flip a token; seeded
    sampling draws from each request's own generator.
    """
    _, _, tok = trained_chatbot()
    model = load_model("tiny", dtype="fp32", vocab_size=tok.vocab_size, seed=3).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier timings on a shared machine (both servers get the same)
    try:
        with running(model, tok, max_batch=1) as one, running(model, tok, max_batch=32) as many:
            alone = {i: _ask(client_for(one), i) for i in range(len(LOAD))}
            one_time, one_replies = _load(one, 32, 1)
            many_time, replies = _load(many, 32, 4)
    finally:
        torch.set_num_threads(threads)
    assert len(replies) == 128 and sorted(r[0] for r in replies) == sorted(i % 8 for i in range(128))
    assert [r for r in one_replies + replies if r != alone[r[0]]] == []
    assert len({alone[i][1] for i in alone}) > 4  # different requests, different replies: a mix-up would show
    one_rate, many_rate = 32 / one_time, 128 / many_time
    assert many_rate >= 3 * one_rate, f"batched {many_rate:.1f} req/s vs one at a time {one_rate:.1f} req/s"
