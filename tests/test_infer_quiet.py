"""The default chat path prints no deprecation warnings (issue 8): it uses transformers' current cache API."""

from __future__ import annotations

import warnings

from glmtune.infer.chat import ChatSession
from glmtune.infer.loading import load_for_inference
from glmtune.infer.sampling import SamplingConfig
from glmtune.methods import prepare
from glmtune.models import load_model


def test_lora_chat_turn_raises_no_future_or_deprecation_warning(tmp_path, chatglm3_dir, capfd):
    prepare(load_model(chatglm3_dir, dtype="fp32"), "lora", {"r": 2}).save(tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tok = load_for_inference(chatglm3_dir, adapter=tmp_path / "adapter", dtype="fp32")
        assert type(model).__name__.startswith("Peft")  # the adapter path really goes through PEFT's forward
        # Default sampling, only fewer tokens; every step after the first passes the KV cache back in.
        reply = ChatSession(model, tok, sampling=SamplingConfig(max_new_tokens=6, seed=0)).chat("你好")
    assert len(reply.token_ids) >= 2
    noisy = [f"{w.category.__name__}: {w.message}" for w in caught
             if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert noisy == []
    # transformers also logs cache renames through its logger (once per process), not only as warnings.
    assert "deprecated" not in capfd.readouterr().err
