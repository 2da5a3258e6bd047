"""``glmtune eval`` on the tiny trained chat model: per-turn samples, batching, metrics, files."""

from __future__ import annotations

import json

import pytest

from glmtune import cli
from glmtune.metrics import compute_metrics
from test_infer_trained import IDENTITY, OBSERVATION, TOOLS, WEATHER, trained_chatbot

RECORDS = [
    {"conversations": [{"role": "user", "content": "who are you"}, {"role": "assistant", "content": IDENTITY}]},
    {"conversations": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"},
                       {"role": "user", "content": "ping again"}, {"role": "assistant", "content": "pong pong"}]},
    {"tools": TOOLS, "conversations": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "tool", "name": "get_weather", "parameters": {"city": "Paris"}, "observation": json.loads(OBSERVATION)},
        {"role": "assistant", "content": WEATHER}]},
    # A reference the model was not trained on: it cannot score 100.
    {"conversations": [{"role": "user", "content": "who are you"},
                       {"role": "assistant", "content": "I am Zorro, a tiny fox bot."}]},
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    trained_chatbot()
    path = tmp_path_factory.mktemp("eval") / "val.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS))
    return path


def run_eval(tmp_path, data_file, *args) -> tuple[int, dict, list[dict]]:
    out = tmp_path / "out"
    code = cli.main(["eval", "--model", str(trained_chatbot()[0]), "--data", str(data_file), "--out", str(out),
                     "--max-new-tokens", "40", *args])
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return code, metrics, rows


def test_eval_scores_each_assistant_turn(tmp_path, data_file, capsys):
    code, metrics, rows = run_eval(tmp_path, data_file, "--batch-size", "3")
    assert code == 0
    # One sample per assistant turn, the tool call included, in file order.
    assert [(r["source"].rsplit(":", 1)[1], r["turn"]) for r in rows] == [
        ("1", 1), ("2", 1), ("2", 3), ("3", 1), ("3", 3), ("4", 1)]
    refs = [r["reference"] for r in rows]
    assert refs[:3] == [IDENTITY, "pong", "pong pong"] and refs[4] == WEATHER
    assert refs[3] == "get_weather\n```python\ntool_call(city='Paris')\n```"
    # The trained answers are reproduced exactly; the untrained reference is not.
    assert [r["prediction"] for r in rows[:5]] == refs[:5]
    assert rows[5]["prediction"] == IDENTITY
    assert all(rows[i]["scores"]["rouge-1"] == 100.0 for i in range(5))
    assert rows[5]["scores"]["rouge-1"] < 100.0
    expected = compute_metrics([r["prediction"] for r in rows], refs)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert metrics["num_samples"] == 6 and metrics["num_conversations"] == 4
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == pytest.approx(expected)


def test_batched_equals_one_by_one(tmp_path, data_file):
    _, _, batched = run_eval(tmp_path / "a", data_file, "--batch-size", "6")
    _, _, single = run_eval(tmp_path / "b", data_file, "--batch-size", "1", "--max-samples", "4")
    assert [r["raw"] for r in single] == [r["raw"] for r in batched[:4]]


def test_bad_data_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + '{"conversations": [{"role": "robot", "content": "x"}]}\n')
    code = cli.main(["eval", "--model", str(trained_chatbot()[0]), "--data", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glmtune: error: 1 invalid record(s)") and f"{bad}:2" in err
