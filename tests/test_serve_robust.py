"""The server under hostile requests: every bad request gets a 400 reply, and abandoned requests stop generating."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from glmtune.infer.sampling import SamplingConfig
from glmtune.infer.server import make_server
from test_infer_chat_robust import ScriptedModel
from test_infer_trained import trained_chatbot


def serve(model, tok):
    server = make_server(model, tok, host="127.0.0.1", port=0, name="ziggy",
                         defaults=SamplingConfig(temperature=0, max_new_tokens=48))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def address():
    _, model, tok = trained_chatbot()
    server, thread = serve(model, tok)
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def raw_request(address, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST exactly these bytes with exactly these headers; (status, JSON reply)."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
    for key, value in (headers or {"Content-Length": str(len(body))}).items():
        conn.putheader(key, value)
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    conn.send(body)
    resp = conn.getresponse()
    status, data = resp.status, json.loads(resp.read())
    conn.close()
    return status, data


HI = [{"role": "user", "content": "ping"}]


@pytest.mark.parametrize("body, param, fragment", [
    (b'{"messages": [{"role": "user", "content": "ping"}], "temperature": NaN}', "temperature", "finite"),
    (b'{"messages": [{"role": "user", "content": "ping"}], "temperature": Infinity}', "temperature", "finite"),
    (json.dumps({"messages": HI, "temperature": -0.5}).encode(), "temperature", ">= 0"),
    (json.dumps({"messages": HI, "seed": 1e30}).encode(), "seed", "between 0 and"),
    (json.dumps({"messages": HI, "seed": -1}).encode(), "seed", "between 0 and"),
    (json.dumps({"messages": HI, "max_tokens": 0}).encode(), "max_tokens", ">= 1"),
    (json.dumps({"messages": HI, "stream_options": 5}).encode(), "stream_options", "must be an object"),
    (json.dumps({"messages": HI, "stream": "yes"}).encode(), "stream", "true or false"),
    (json.dumps({"messages": HI, "stop": 5}).encode(), "stop", "a string or a list of strings"),
    (json.dumps({"messages": HI, "stop": ["ok", 5]}).encode(), "stop", "a string or a list of strings"),
    (json.dumps({"messages": HI, "stop": [""]}).encode(), "stop", "must not be empty"),
    (json.dumps({"messages": HI, "stop": ["x"] * 17}).encode(), "stop", "at most 16"),
    (json.dumps({"messages": HI, "model": 5}).encode(), "model", "'model' must be a string"),
    (json.dumps({"messages": HI, "tool_choice": 5}).encode(), "tool_choice", "must be \"none\", \"auto\""),
    (json.dumps({"messages": HI, "tool_choice": "required"}).encode(), "tool_choice", "not supported"),
    (b'{"messages": [{"role": "user", "content": "ping"}], "frequency_penalty": NaN}', "frequency_penalty", "finite"),
    (json.dumps({"messages": HI, "presence_penalty": 3}).encode(), "presence_penalty", "between -2 and 2"),
    (json.dumps({"messages": HI, "presence_penalty": 0.5}).encode(), "presence_penalty", "not supported"),
    (json.dumps({"messages": HI, "repetition_penalty": 0}).encode(), "repetition_penalty", "> 0"),
    (json.dumps({"messages": HI, "repetition_penalty": -1}).encode(), "repetition_penalty", "> 0"),
    (b'{"messages": [{"role": "user", "content": "ping"}], "repetition_penalty": Infinity}', "repetition_penalty",
     "finite"),
    (json.dumps({"messages": HI, "top_k": -1}).encode(), "top_k", ">= 0"),
    (json.dumps({"messages": HI, "logprobs": True}).encode(), "logprobs", "not supported"),
    (json.dumps({"messages": HI, "top_logprobs": 3}).encode(), "top_logprobs", "not supported"),
    (json.dumps({"messages": HI, "response_format": {"type": "json_object"}}).encode(), "response_format",
     "not supported"),
    (json.dumps({"messages": HI, "n": 2}).encode(), "n", "only n=1"),
    (b'{"messages": [{"role": "user", "content": "bad \\ud800 text"}]}', None, "not valid UTF-8"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
])
def test_bad_values_get_openai_shaped_400(address, body, param, fragment):
    status, data = raw_request(address, body)
    assert status == 400, data
    error = data["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error" and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_supported_option_values_still_answered(address):
    body = {"messages": [{"role": "user", "content": "who are you"}], "stop": [], "tool_choice": "auto",
            "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "response_format": {"type": "text"},
            "n": 1, "repetition_penalty": 1.0, "top_k": 0}
    status, data = raw_request(address, json.dumps(body).encode())
    assert status == 200 and data["choices"][0]["message"]["content"]


def test_request_repetition_penalty_is_applied(address):
    def answer(**extra):
        body = {"messages": [{"role": "user", "content": "who are you"}], **extra}
        status, data = raw_request(address, json.dumps(body).encode())
        assert status == 200
        return data["choices"][0]["message"]["content"]

    assert answer(repetition_penalty=50.0) != answer() == answer(repetition_penalty=1.0)


@pytest.mark.parametrize("length", ["-5", "abc", "1e3", ""])
def test_bad_content_length_gets_400(address, length):
    """uvicorn's HTTP parser refuses a malformed Content-Length itself (400, a plain-text body)."""
    body = json.dumps({"messages": HI}).encode()
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
    conn.putheader("Content-Length", length)
    conn.endheaders()
    conn.send(body)
    resp = conn.getresponse()
    assert resp.status == 400 and b"Invalid HTTP request" in resp.read()
    conn.close()


def test_declared_body_over_the_limit_is_refused_unread(address):
    status, data = raw_request(address, b"{}", {"Content-Length": str(17 * 1024 * 1024)})
    assert status == 400 and "request body too large" in data["error"]["message"]


def test_server_still_answers_after_bad_requests(address):
    raw_request(address, b'{"messages": [], "temperature": NaN}')
    status, data = raw_request(address, json.dumps({"messages": [{"role": "user", "content": "who are you"}]}).encode())
    assert status == 200 and data["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_abandoned_request_stops_generation(stream):
    _, _, tok = trained_chatbot()
    # Endless text ("\n" then one word forever), slowed down so the run would take minutes.
    model = ScriptedModel(tok.encode("\npong"), tok.encode("pong")[-1], tok.vocab_size, max_positions=10**7)
    slow_forward = model.forward

    def forward(*args, **kwargs):
        time.sleep(0.002)
        return slow_forward(*args, **kwargs)

    model.forward = forward
    server, thread = serve(model, tok)
    try:
        body = json.dumps({"messages": HI, "max_tokens": 100_000, "stream": stream}).encode()
        sock = socket.create_connection(server.server_address[:2], timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)
        if stream:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # tokens are flowing
        sock.close()
        time.sleep(0.5)
        after_close = model.calls
        time.sleep(0.5)
        assert model.calls == after_close and after_close < 5000
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_streamed_reply_without_leading_newline_is_sent():
    _, _, tok = trained_chatbot()
    model = ScriptedModel(tok.encode("pong pong") + [tok.get_command("<|user|>")], 0, tok.vocab_size)
    server, thread = serve(model, tok)
    try:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"messages": HI, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        lines = [line.decode() for line in resp.read().splitlines() if line.startswith(b"data: {")]
        conn.close()
        deltas = [json.loads(line[6:])["choices"] for line in lines]
        text = "".join(c[0]["delta"].get("content", "") for c in deltas if c)
        assert resp.status == 200 and text == "pong pong"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
