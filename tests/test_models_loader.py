"""greenprof.models.loader: format detection, binding by name, and one clear error per bad input.

The "toy" decoders here are built with the onnx helper API (no torch): a real KV-cache
signature whose logits depend on every cached value, so wrong KV handling changes the tokens.
The torch/transformers exports (real Llama, checked against transformers' own generation) live
in test_models_runner.py and are skipped when torch or transformers cannot be imported.
Helpers in the first section are imported by test_models_runner.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from greenprof.errors import UsageError
from greenprof.models import errors as merr
from greenprof.models.loader import load

# --------------------------------------------------------------------------- helpers (shared)

OPSET = [helper.make_opsetid("", 17)]


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def toy_decoder(
    path: Path,
    *,
    layers: int = 2,
    kv_heads: int = 2,
    head_dim: int = 4,
    vocab: int = 32,
    position_ids: bool = True,
    past: bool = True,
    kv_dtype: Any = np.float32,
    batch_dim: str | int = "batch_size",
    past_dim: str | int = "past_sequence_length",
    extra_inputs: tuple[str, ...] = (),
    use_cache_branch: bool = False,
    past_tpl: tuple[str, str] = ("past_key_values.%d.key", "past_key_values.%d.value"),
    present_tpl: tuple[str, str] = ("present.%d.key", "present.%d.value"),
    seed: int = 0,
) -> Path:
    """Write a small KV-cache decoder in the optimum signature (names overridable).

    Per layer the new key/value are the token (and position) embedding reshaped to
    (batch, kv_heads, seq, head_dim), appended to the past. logits = (x + 0.1 * sum over every
    cached value of the last layer) @ W, so they depend on the whole history: a run with the
    KV cache gives the same last-position logits as a full re-run with an empty past.
    """
    rng = np.random.default_rng(seed)
    hd = kv_heads * head_dim
    onnx_kv = TensorProto.FLOAT16 if np.dtype(kv_dtype) == np.float16 else TensorProto.FLOAT
    inits = [
        _init("E", rng.normal(size=(vocab, hd)).astype(np.float32)),
        _init("P", rng.normal(size=(4096, hd)).astype(np.float32) * 0.5),
        _init("W", rng.normal(size=(hd, vocab)).astype(np.float32)),
        _init("shape_bshd", np.array([0, 0, kv_heads, head_dim], np.int64)),
        _init("shape_b1h", np.array([0, 1, hd], np.int64)),
        _init("axis_seq", np.array([2], np.int64)),
        _init("tenth", np.array(0.1, np.float32)),
    ]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["tok"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch_dim, "sequence_length"])]
    inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch_dim, "total_sequence_length"]))
    if position_ids:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, [batch_dim, "sequence_length"]))
        nodes += [helper.make_node("Gather", ["P", "position_ids"], ["pos"]), helper.make_node("Add", ["tok", "pos"], ["x"])]
    else:
        nodes.append(helper.make_node("Identity", ["tok"], ["x"]))
    # mask scale: max(mask) == 1, so it only makes the mask a consumed input
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["mask_f"], ["mask_max"], keepdims=0),
        helper.make_node("Reshape", ["x", "shape_bshd"], ["x4"]),
        helper.make_node("Transpose", ["x4"], ["k_new_f"], perm=[0, 2, 1, 3]),
        helper.make_node("Cast", ["k_new_f"], ["k_new"], to=onnx_kv),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, "sequence_length", vocab])]
    kv_shape_in = [batch_dim, kv_heads, past_dim, head_dim]
    kv_shape_out = [batch_dim, kv_heads, "total_sequence_length", head_dim]
    last_v = "k_new"
    for i in range(layers):
        pk, pv = past_tpl[0] % i, past_tpl[1] % i
        ok, ov = present_tpl[0] % i, present_tpl[1] % i
        inits.append(_init(f"vscale{i}", np.array(1.0 + i, np.float32).astype(kv_dtype)))
        nodes.append(helper.make_node("Mul", ["k_new", f"vscale{i}"], [f"v_new{i}"]))
        if past:
            inputs += [
                helper.make_tensor_value_info(pk, onnx_kv, kv_shape_in),
                helper.make_tensor_value_info(pv, onnx_kv, kv_shape_in),
            ]
            nodes += [
                helper.make_node("Concat", [pk, "k_new"], [ok], axis=2),
                helper.make_node("Concat", [pv, f"v_new{i}"], [ov], axis=2),
            ]
            outputs += [
                helper.make_tensor_value_info(ok, onnx_kv, kv_shape_out),
                helper.make_tensor_value_info(ov, onnx_kv, kv_shape_out),
            ]
            last_v = ov
        else:
            last_v = f"v_new{i}"
    nodes += [
        helper.make_node("Cast", [last_v], ["v_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["v_f", "axis_seq"], ["ctx"], keepdims=0),  # (B, H, D)
        helper.make_node("Reshape", ["ctx", "shape_b1h"], ["ctx3"]),
        helper.make_node("Mul", ["ctx3", "tenth"], ["ctx_s"]),
        helper.make_node("Mul", ["ctx_s", "mask_max"], ["ctx_m"]),
        helper.make_node("Add", ["x", "ctx_m"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["logits"]),
    ]
    for name in extra_inputs:
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, [batch_dim]))
    if use_cache_branch:
        inputs.append(helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]))
    graph = helper.make_graph(nodes, "toy_decoder", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="greenprof-tests")
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def image_classifier(path: Path) -> Path:
    """pixel_values (1, 3, 8, 8) -> logits (1, 10): valid ONNX, not a decoder LM."""
    w = np.random.default_rng(1).normal(size=(192, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixel_values"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "classifier",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[_init("W", w)],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return path


def byte_tokenizer(path: Path) -> Path:
    """A 256-token byte-level tokenizer.json (ids 0..255, one per byte symbol, no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))
    return path


def genai_config(folder: Path, filename: str, *, layers: int, kv_heads: int, head_dim: int, vocab: int,
                 eos: int | list[int] = 2, context_length: int = 2048) -> Path:
    """A genai_config.json in the onnxruntime-genai model builder's layout (no position_ids)."""
    cfg = {
        "model": {
            "bos_token_id": 1,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": head_dim,
                "hidden_size": kv_heads * head_dim,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": kv_heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": 0,
            "type": "llama",
            "vocab_size": vocab,
        },
        "search": {"do_sample": False, "max_length": context_length, "past_present_share_buffer": False},
    }
    path = folder / "genai_config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


# --------------------------------------------------------------------------- format detection


def test_optimum_file_and_folder(tmp_path: Path) -> None:
    f = toy_decoder(tmp_path / "export" / "model.onnx")
    byte_tokenizer(tmp_path / "export" / "tokenizer.json")
    for target in (f, f.parent, str(f.parent)):
        m = load(target)
        assert m.format == "optimum"
        assert m.path == f
        assert m.tokenizer is not None
    sig = m.signature
    assert sig.num_layers == 2 and sig.num_kv_heads == 2 and sig.head_dim == 4
    assert sig.kv_dtype == np.float32 and sig.supports_batch and sig.fixed_batch is None
    assert sig.past_keys == ("past_key_values.0.key", "past_key_values.1.key")
    assert sig.present_values == ("present.0.value", "present.1.value")
    assert sig.position_ids == "position_ids" and sig.use_cache_branch is None
    assert sig.vocab_size == 32 and m.vocab_size == 32
    assert m.provider == "CPUExecutionProvider" and m.device == "cpu"


def test_merged_decoder_name_preferred(tmp_path: Path) -> None:
    toy_decoder(tmp_path / "model.onnx", layers=1)
    toy_decoder(tmp_path / "decoder_model_merged.onnx", layers=3, use_cache_branch=True)
    m = load(tmp_path)
    assert m.path.name == "decoder_model_merged.onnx"
    assert m.signature.num_layers == 3 and m.signature.use_cache_branch == "use_cache_branch"


def test_single_onnx_file_with_other_name(tmp_path: Path) -> None:
    toy_decoder(tmp_path / "smollm.onnx")
    assert load(tmp_path).path.name == "smollm.onnx"


def test_binding_is_by_name_not_position(tmp_path: Path) -> None:
    """Past inputs declared in a shuffled order (all values, then keys) still pair up by name."""
    f = toy_decoder(tmp_path / "model.onnx", layers=3)
    model = onnx.load(str(f))
    inputs = list(model.graph.input)
    past = [i for i in inputs if i.name.startswith("past_")]
    rest = [i for i in inputs if not i.name.startswith("past_")]
    shuffled = sorted(past, key=lambda i: (not i.name.endswith("value"), -int(i.name.split(".")[1])))
    del model.graph.input[:]
    model.graph.input.extend(shuffled + rest)
    onnx.save(model, str(f))
    sig = load(f).signature
    assert sig.past_keys == tuple(f"past_key_values.{i}.key" for i in range(3))
    assert sig.past_values == tuple(f"past_key_values.{i}.value" for i in range(3))


def test_fp16_kv_and_fixed_batch(tmp_path: Path) -> None:
    sig = load(toy_decoder(tmp_path / "model.onnx", kv_dtype=np.float16, batch_dim=1)).signature
    assert sig.kv_dtype == np.float16
    assert sig.fixed_batch == 1 and not sig.supports_batch


def test_genai_folder(tmp_path: Path) -> None:
    toy_decoder(tmp_path / "decoder.onnx", position_ids=False, layers=3, kv_heads=2, head_dim=4)
    genai_config(tmp_path, "decoder.onnx", layers=3, kv_heads=2, head_dim=4, vocab=32, eos=[5, 7], context_length=99)
    for target in (tmp_path, tmp_path / "genai_config.json", tmp_path / "decoder.onnx"):
        m = load(target)
        assert m.format == "genai"
        assert m.signature.position_ids is None
        assert m.signature.num_layers == 3
        assert m.eos_token_ids == (5, 7)
        assert m.context_length == 99


def test_genai_custom_name_templates(tmp_path: Path) -> None:
    toy_decoder(
        tmp_path / "model.onnx",
        position_ids=False,
        past_tpl=("past_key_%d", "past_value_%d"),
        present_tpl=("present_key_%d", "present_value_%d"),
    )
    genai_config(tmp_path, "model.onnx", layers=2, kv_heads=2, head_dim=4, vocab=32)
    cfg = json.loads((tmp_path / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    dec["inputs"].update(past_key_names="past_key_%d", past_value_names="past_value_%d")
    dec["outputs"].update(present_key_names="present_key_%d", present_value_names="present_value_%d")
    (tmp_path / "genai_config.json").write_text(json.dumps(cfg))
    sig = load(tmp_path).signature
    assert sig.past_keys == ("past_key_0", "past_key_1")
    assert sig.present_values == ("present_value_0", "present_value_1")


def test_eos_from_config_json_and_metadata(tmp_path: Path) -> None:
    toy_decoder(tmp_path / "model.onnx")
    assert load(tmp_path).eos_token_ids == ()
    (tmp_path / "greenprof-model.json").write_text(json.dumps({"name": "toy", "eos_token_id": 9}))
    m = load(tmp_path)
    assert m.eos_token_ids == (9,) and m.metadata["name"] == "toy"
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [3, 4], "max_position_embeddings": 64}))
    m = load(tmp_path)
    assert m.eos_token_ids == (3, 4) and m.context_length == 64


# --------------------------------------------------------------------------- session options


def test_session_options(tmp_path: Path) -> None:
    f = toy_decoder(tmp_path / "model.onnx")
    m = load(f, threads=1, graph_opt="basic")
    opts = m.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert m.threads == 1 and m.graph_opt == "basic" and not m.spinning
    import onnxruntime as ort

    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    spinning = load(f, spinning=True).session.get_session_options()
    with pytest.raises(RuntimeError):  # entry not set: onnxruntime keeps its default (spin)
        spinning.get_session_config_entry("session.intra_op.allow_spinning")
    assert load(f, providers=["cpu"]).provider == "CPUExecutionProvider"
    assert load(f, providers="CPUExecutionProvider").describe()["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"graph_opt": "fast"}, "graph_opt='fast' is not a graph optimization level: use one of"),
        ({"threads": 0}, "threads=0: give a positive number"),
        ({"providers": "cuda:x"}, "must be a number"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict[str, Any], needle: str) -> None:
    f = toy_decoder(tmp_path / "model.onnx")
    with pytest.raises(merr.InvalidArgument, match=needle):
        load(f, **kwargs)


def test_cuda_requested_but_missing(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    f = toy_decoder(tmp_path / "model.onnx")
    with pytest.raises(merr.ProviderUnavailable) as err:
        load(f, providers="cuda")
    msg = str(err.value)
    assert "CUDAExecutionProvider is not available" in msg and "onnxruntime-gpu" in msg
    assert "CPUExecutionProvider" in msg  # lists what is available
    assert isinstance(err.value, UsageError)


# --------------------------------------------------------------------------- bad inputs


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert isinstance(err.value, UsageError) and isinstance(err.value, merr.ModelError)
    return msg


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(merr.ModelNotFound) as err:
        load(tmp_path / "nope" / "model.onnx")
    msg = _one_line(err)
    assert "does not exist" in msg and "greenprof expects an .onnx file" in msg


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(merr.ModelNotFound, match="holds no ONNX model"):
        load(tmp_path)


def test_folder_with_several_onnx_files(tmp_path: Path) -> None:
    toy_decoder(tmp_path / "a.onnx")
    toy_decoder(tmp_path / "b.onnx")
    with pytest.raises(merr.ModelNotFound, match=r"several ONNX files \(a.onnx, b.onnx\).*pass the decoder's .onnx file"):
        load(tmp_path)


def test_text_file_is_not_onnx(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_text("this is a README, not a model\n")
    with pytest.raises(merr.NotOnnxModel) as err:
        load(f)
    msg = _one_line(err)
    assert "is not an ONNX model (it holds text)" in msg and "greenprof expects a decoder LM" in msg


def test_truncated_onnx(tmp_path: Path) -> None:
    f = toy_decoder(tmp_path / "model.onnx")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(merr.CorruptModel) as err:
        load(f)
    msg = _one_line(err)
    assert "truncated or damaged ONNX file" in msg and "re-download or re-export" in msg


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"")
    with pytest.raises(merr.CorruptModel, match="is empty"):
        load(f)


def test_image_classifier_is_not_a_decoder(tmp_path: Path) -> None:
    with pytest.raises(merr.NotADecoderModel) as err:
        load(image_classifier(tmp_path / "resnet.onnx"))
    msg = _one_line(err)
    assert "is not a decoder LM (inputs: pixel_values; outputs: logits)" in msg
    assert "greenprof expects a decoder LM with inputs input_ids" in msg


def test_decoder_without_kv_cache(tmp_path: Path) -> None:
    with pytest.raises(merr.NoKVCache) as err:
        load(toy_decoder(tmp_path / "model.onnx", past=False))
    msg = _one_line(err)
    assert "exported without KV cache" in msg
    assert "optimum-cli export onnx --task text-generation-with-past" in msg


def test_unknown_extra_input(tmp_path: Path) -> None:
    with pytest.raises(merr.UnsupportedModel, match=r"does not know how to feed \(seqlens_k\)"):
        load(toy_decoder(tmp_path / "model.onnx", extra_inputs=("seqlens_k",)))


def test_static_kv_cache(tmp_path: Path) -> None:
    with pytest.raises(merr.UnsupportedModel, match="fixed sequence length 128"):
        load(toy_decoder(tmp_path / "model.onnx", past_dim=128))


def test_genai_config_naming_missing_file(tmp_path: Path) -> None:
    genai_config(tmp_path, "missing.onnx", layers=2, kv_heads=2, head_dim=4, vocab=32)
    with pytest.raises(merr.ModelNotFound, match="names model file missing.onnx"):
        load(tmp_path)


def test_genai_config_not_json(tmp_path: Path) -> None:
    (tmp_path / "genai_config.json").write_text("{not json")
    with pytest.raises(merr.UnsupportedModel, match="is not valid JSON"):
        load(tmp_path)


def test_import_is_lazy() -> None:
    """Importing the loader and runner must not import onnxruntime (or torch)."""
    import subprocess
    import sys

    code = (
        "import sys, greenprof.models.loader, greenprof.models.runner;"
        "print('onnxruntime' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
