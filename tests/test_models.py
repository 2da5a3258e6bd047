"""Native loading of ChatGLM3 checkpoints: conformance with the official model, conversion, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import glmtune
from glmtune.models import CheckpointError, SHAPES, chatglm_state_dict_to_glm, glm_state_dict_to_chatglm
from glmtune.models.checkpoint import iter_tensors, weight_files

from conftest import TINY, need_fixtures


@pytest.fixture(scope="module")
def ref():
    need_fixtures()
    return load_file(str(TINY / "reference.safetensors"))


@pytest.fixture(scope="module")
def official():
    need_fixtures()
    return glmtune.load_model(TINY)


def assert_matches_reference(logits, ref, prefix, mask=None):
    """Compare logits with the four reference views; only positions where mask is true."""
    mask = torch.ones(logits.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    views = {
        "head": logits[..., :512],
        "tail": logits[..., -512:],
        "logsumexp": logits.logsumexp(-1),
    }
    for name, value in views.items():
        diff = (value - ref[f"{prefix}_{name}"])[mask].abs().max().item()
        assert diff <= 1e-5, f"{prefix}_{name}: max abs diff {diff}"
    assert torch.equal(logits.argmax(-1)[mask], ref[f"{prefix}_argmax"][mask])


def test_padded_batch_matches_official(official, ref):
    with torch.no_grad():
        out = official(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                       position_ids=ref["position_ids"]).logits
    assert_matches_reference(out, ref, "logits", ref["attention_mask"])


def test_single_prompt_greedy_and_loss_match_official(official, ref):
    ids = ref["single_input_ids"]
    with torch.no_grad():
        out = official(input_ids=ids, labels=ref["loss_labels"])
    assert_matches_reference(out.logits, ref, "single_logits")
    assert abs(out.loss.item() - ref["loss"].item()) <= 1e-5
    gen = official.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None)
    assert gen[0, ids.shape[1]:].tolist() == ref["greedy_ids"].tolist()


def test_left_padded_generate_matches_single(official, ref):
    """transformers' generate on the official left-padded batch gives row 2 the single-prompt tokens."""
    gen = official.generate(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], max_new_tokens=16,
                            min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert gen[1, ref["input_ids"].shape[1]:].tolist() == ref["greedy_ids"].tolist()


def test_round_trip_native_chatglm3_native(official, tmp_path):
    glmtune.save_model(official, tmp_path / "native", layout="native")
    native = glmtune.load_model(tmp_path / "native")
    glmtune.save_model(native, tmp_path / "cg", layout="chatglm3", max_shard_bytes=3_000_000)
    assert (tmp_path / "cg" / "model.safetensors.index.json").is_file()
    back = glmtune.load_model(tmp_path / "cg")
    a, b = official.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The chatglm3 layout written is the official one: same keys and tensors as the fixture.
    written = {}
    for f in weight_files(tmp_path / "cg"):
        written.update(iter_tensors(f))
    original = {}
    for f in weight_files(TINY):
        original.update(iter_tensors(f))
    assert written.keys() == original.keys() - {"transformer.rotary_pos_emb.inv_freq"}
    for k in written:
        assert torch.equal(written[k].float(), original[k].float()), k
    assert json.loads((tmp_path / "cg" / "config.json").read_text())["model_type"] == "chatglm"


def test_state_dict_conversion_functions_are_inverse(tiny_model):
    sd = tiny_model.state_dict()
    back = chatglm_state_dict_to_glm(glm_state_dict_to_chatglm(sd, tiny_model.config), tiny_model.config)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_save_sharded_makes_and_writes_one_shard_at_a_time(tmp_path):
    """Streaming: a shard's tensors are made only after every earlier shard is on disk."""
    from glmtune.models.checkpoint import LazyTensor, save_sharded

    made = []

    def make(i):
        made.append((i, sorted(p.name for p in tmp_path.glob("model-*.safetensors"))))
        return torch.full((4, 4), float(i))  # 64 bytes as float32

    state = {f"t{i}": LazyTensor(64, lambda i=i: make(i)) for i in range(4)}
    paths = save_sharded(state, tmp_path, max_shard_bytes=128)
    assert [p.name for p in paths] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert [names for _, names in made] == [[], [], [paths[0].name], [paths[0].name]]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 256 and index["weight_map"]["t3"] == paths[1].name
    assert torch.equal(load_file(paths[1])["t2"], torch.full((4, 4), 2.0))


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16, torch.float32])
def test_bin_shards_and_storage_dtypes(tmp_path, ref, storage):
    """Sharded pytorch_model-*.bin with an index, in each storage dtype, loads like the original."""
    shutil.copy(TINY / "config.json", tmp_path)
    tensors = {}
    for f in weight_files(TINY):
        tensors.update(iter_tensors(f))
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        fname = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: tensors[k].to(storage) for k in part}, tmp_path / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = glmtune.load_model(tmp_path)
    assert next(model.parameters()).dtype == torch.float32  # dtype=None on CPU means float32
    with torch.no_grad():
        out = model(input_ids=ref["single_input_ids"]).logits
    tol = 1e-5 if storage != torch.bfloat16 else 0.5  # bf16 storage rounds the fp16 weights
    assert (out[..., :512] - ref["single_logits_head"]).abs().max() <= tol
    assert next(glmtune.load_model(tmp_path, dtype="bf16").parameters()).dtype == torch.bfloat16


def test_single_safetensors_file(tmp_path, ref, official):
    shutil.copy(TINY / "config.json", tmp_path)
    tensors = {}
    for f in weight_files(TINY):
        tensors.update(iter_tensors(f))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = glmtune.load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), official.state_dict().values()))


def test_rope_ratio_and_32k_config(tmp_path, chatglm3_dir):
    cfg = json.loads((chatglm3_dir / "config.json").read_text())
    cfg.update(rope_ratio=50, seq_length=32768)
    shutil.copytree(chatglm3_dir, tmp_path / "m",
                    ignore=shutil.ignore_patterns("ptuning", "lora-official", "reference*"))
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    model = glmtune.load_model(tmp_path / "m")
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    assert model.config.max_position_embeddings == 32768
    inv = model.model.rotary_emb.inv_freq
    assert inv.shape == (2,)  # partial rotary: half of head_dim 8, one frequency per pair
    assert torch.allclose(inv, 1.0 / (500000.0 ** (torch.arange(0, 4, 2).float() / 4)))


def _copy_tiny(tmp_path, source):
    dst = tmp_path / "model"
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns("ptuning", "lora-official", "reference*"))
    return dst


def _one_line_error(path, needle):
    with pytest.raises(CheckpointError) as info:
        glmtune.load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


def test_error_unsupported_config_option(tmp_path, chatglm3_dir):
    m = _copy_tiny(tmp_path, chatglm3_dir)
    cfg = json.loads((m / "config.json").read_text())
    cfg["add_bias_linear"] = True
    (m / "config.json").write_text(json.dumps(cfg))
    msg = _one_line_error(m, "add_bias_linear")
    assert "config.json" in msg


def test_error_missing_shard(tmp_path, chatglm3_dir):
    m = _copy_tiny(tmp_path, chatglm3_dir)
    (m / "model-00002-of-00002.safetensors").unlink()
    msg = _one_line_error(m, "model-00002-of-00002.safetensors")
    assert "missing" in msg and "index" in msg


def test_error_wrong_tensor_shape(tmp_path, chatglm3_dir):
    m = _copy_tiny(tmp_path, chatglm3_dir)
    shard = m / "model-00001-of-00002.safetensors"
    tensors = dict(iter_tensors(shard))
    tensors["transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"] = torch.zeros(32, 16, dtype=torch.float16)
    save_file(tensors, str(shard))
    msg = _one_line_error(m, "dense_4h_to_h")
    assert "model-00001-of-00002.safetensors" in msg and "(32, 16)" in msg


def test_error_non_chatglm_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    msg = _one_line_error(tmp_path, "llama")
    assert "config.json" in msg
    with pytest.raises(CheckpointError, match="not a model folder and not a known shape"):
        glmtune.load_model(tmp_path / "nope")


def test_error_truncated_shard(tmp_path, chatglm3_dir):
    m = _copy_tiny(tmp_path, chatglm3_dir)
    shard = m / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    _one_line_error(m, "truncated")


def test_model_folder_code_is_never_run(tmp_path, chatglm3_dir):
    """A modeling file in the folder and a pickle payload in a .bin are never executed."""
    m = _copy_tiny(tmp_path, chatglm3_dir)
    marker = tmp_path / "pwned"
    (m / "modeling_chatglm.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    glmtune.load_model(m)
    assert not marker.exists()

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(chatglm3_dir / "config.json", evil)
    torch.save({"x": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        glmtune.load_model(evil)
    assert not marker.exists()


def test_named_shapes():
    model = glmtune.load_model("tiny")
    assert model.config.num_hidden_layers == 2 and next(model.parameters()).dtype == torch.float32
    assert not model.training
    assert {"chatglm3-6b", "glm-4-9b", "tiny"} <= set(SHAPES)
    with pytest.raises(CheckpointError, match="known shapes|shapes:"):
        glmtune.load_model("chatglm99")
    # Same seed, same weights; shapes use the real ChatGLM3 dimensions.
    again = glmtune.load_model("tiny")
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)
    big = glmtune.models.shape_config("chatglm3-6b")
    assert (big.num_hidden_layers, big.hidden_size, big.num_key_value_heads, big.vocab_size) == (28, 4096, 2, 65024)


def test_init_model_cli_writes_loadable_folder(tmp_path, chatglm3_dir):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "glmtune", "init-model", "--shape", "tiny", "--tokenizer", str(chatglm3_dir),
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    model = glmtune.load_model(out)
    assert model.config.vocab_size == 65024
    assert next(glmtune.load_model(out, dtype=None, device="cpu").parameters()).dtype == torch.float32
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == glmtune.load_tokenizer(chatglm3_dir).stop_ids  # [2, <|user|>, <|observation|>]
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("command", ["chat", "eval", "serve", "init-model"])
def test_unknown_dtype_is_one_line_error(command, tmp_path, capsys, chatglm3_dir):
    from glmtune.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "yo"}]}) + "\n")
    argv = {"chat": ["--model", str(chatglm3_dir)], "serve": ["--model", str(chatglm3_dir), "--port", "0"],
            "eval": ["--model", str(chatglm3_dir), "--data", str(data)],
            "init-model": ["--shape", "tiny", "--tokenizer", str(chatglm3_dir), "--out", str(tmp_path / "m")]}[command]
    code = main([command, *argv, "--dtype", "foo"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glmtune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "'foo'" in err and "bf16" in err and "fp32" in err


@pytest.mark.parametrize("header", [
    [1, 2],
    {"w": "not an object"},
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}},
    {"w": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 8]}},
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [-4, 4]}},
    {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
])
def test_malformed_safetensors_header_is_a_clear_error(tmp_path, header):
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16))
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        list(iter_tensors(path))


def test_adapter_and_prefix_together_are_refused_before_loading():
    with pytest.raises(CheckpointError, match="not both"):
        glmtune.load_model("tiny", adapter="a", prefix="p")


def test_find_glm_lives_in_models_and_sees_through_wrappers():
    from torch import nn

    from glmtune.methods import PrefixOptions, prepare
    from glmtune.models import find_glm

    model = glmtune.models.load_model("tiny", dtype="fp32")
    assert find_glm(model) is model
    assert find_glm(prepare(model, "ptuning", PrefixOptions(2)).model) is model
    with pytest.raises(CheckpointError, match="expected a GLM causal LM .*got Linear"):
        find_glm(nn.Linear(2, 2))
