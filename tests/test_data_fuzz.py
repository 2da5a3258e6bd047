"""Any wrong type anywhere in a record gives a located RecordError, never another exception."""

from __future__ import annotations

import copy

import pytest

from glmtune.data.chat_format import encode_chat
from glmtune.data.convert import convert_record
from glmtune.data.errors import RecordError
from glmtune.data.messages import Conversation
from test_data_formats import CHATGLM3, OPENAI, SHAREGPT

SAMPLES = {
    "chatglm3": CHATGLM3,
    "openai": OPENAI,
    "sharegpt": SHAREGPT,
    "alpaca": {"system": "s", "instruction": "i", "input": "x", "output": "o", "history": [["q", "a"]]},
    "base": {"context": "c", "target": "t"},
    "columns": {"system": "s", "user": "u", "assistant": "a"},
}
WRONG = (None, 1, 2.5, True, "text", [], {}, [1], {"k": 1}, "[1, 2", "{\"a\": [}")


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


def _replace(obj, path, value):
    obj = copy.deepcopy(obj)
    if not path:
        return value
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_every_mutation_is_a_record_error_or_valid(fmt, tokenizer):
    sample = SAMPLES[fmt]
    checked = 0
    for path in _paths(sample):
        for value in WRONG:
            record = _replace(sample, path, value)
            try:
                result = convert_record(record, fmt, "f.jsonl", 7)
            except RecordError as exc:
                assert str(exc).startswith("f.jsonl:7: ") and "expected" in str(exc)
            else:
                assert isinstance(result, Conversation)
                ids, labels = encode_chat(result, tokenizer)  # what validation accepts must encode
                assert len(ids) == len(labels) and any(t != -100 for t in labels)
            checked += 1
    assert checked > 20
