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


# --------------------------------------------------------------------------- parameter count, models info
#
# count_params reads the graph and the initializers' dims only (onnx.load(load_external_data=False)).
# The reference counts come from outside it: ModelShape's formula for greenprof's builds,
# transformers' num_parameters() for torch exports (tied weights once), hand sums for the toys.


def _tiny_falcon():
    from greenprof.models.shapes import ModelShape

    return ModelShape("tiny-falcon", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=256,
                      vocab=320, tied_embeddings=True, max_position=256, architecture="falcon")


def _tiny_untied():
    from greenprof.models.shapes import ModelShape

    return ModelShape("tiny-untied", hidden=64, layers=2, heads=4, kv_heads=1, head_dim=32, intermediate=96,
                      vocab=300, tied_embeddings=False, max_position=256)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_count_params_of_greenprof_builds(tmp_path: Path, precision: str) -> None:
    from greenprof.models.builder import build
    from greenprof.models.inspect import count_params
    from greenprof.models.shapes import get_shape, param_count

    for shape in (get_shape("tiny"), _tiny_untied(), _tiny_falcon()):
        for attention in ("gqa", "plain"):
            count = count_params(build(shape, precision, tmp_path, attention=attention))
            assert count.total == param_count(shape), (shape.name, attention)
            assert count.tied_embeddings is shape.tied_embeddings
            assert count.embedding_shape == (shape.vocab, shape.hidden)
            assert count.precision == precision and count.notes == []
            if precision != "fp32" and shape.tied_embeddings:
                assert count.shared == shape.vocab * shape.hidden  # the head aliases the embedding's bytes


def test_count_params_reads_no_external_weights(tmp_path: Path) -> None:
    """With model.onnx.data gone, the count is the same: the weights are never read."""
    from greenprof.models.builder import build
    from greenprof.models.inspect import count_params
    from greenprof.models.shapes import get_shape, param_count

    for precision in ("fp32", "int4"):
        folder = build("tiny", precision, tmp_path / precision)
        (folder / "model.onnx.data").unlink()
        count = count_params(folder)
        assert count.total == param_count(get_shape("tiny")) and count.tied_embeddings is True


def test_count_params_of_a_toy_and_its_buffers(tmp_path: Path) -> None:
    """Weights count; scalars, int64 constants, rotary caches, masks and quantization metadata do not."""
    from greenprof.models.inspect import count_params

    path = toy_decoder(tmp_path / "toy" / "model.onnx", vocab=32, kv_heads=2, head_dim=4)
    count = count_params(path)
    assert count.total == 32 * 8 + 4096 * 8 + 8 * 32  # E, P (learned positions), W
    assert count.tied_embeddings is False and count.by_dtype == {"float32": count.total}


def test_count_params_of_every_quantized_form(tmp_path: Path) -> None:
    """One graph with each packed/quantized weight form onnxruntime runs; each counts as the logical
    weights it holds, its scales and zero points not at all."""
    from greenprof.models.inspect import count_params

    k, n, v = 64, 48, 100
    u8 = lambda *shape: np.zeros(shape, np.uint8)  # noqa: E731
    i8 = lambda *shape: np.zeros(shape, np.int8)  # noqa: E731
    f32 = lambda *shape: np.ones(shape, np.float32)  # noqa: E731
    inits = [
        _init("nbits4.q", u8(n, k // 32, 16)), _init("nbits4.s", f32(n * k // 32)), _init("nbits4.zp", u8(n * 2 // 2)),
        _init("nbits8.q", u8(n, k // 32, 32)), _init("nbits8.s", f32(n * k // 32)),
        _init("gbq.q", u8(v, k // 2)), _init("gbq.s", f32(v, k // 32)),
        _init("dq8.w", i8(k, n)), _init("dq8.s", np.array(0.1, np.float32)), _init("dq8.zp", np.array(0, np.int8)),
        helper.make_tensor("dq4.w", TensorProto.INT4, [k, n], np.zeros(k * n, np.int8).tolist()),
        _init("dq4.s", f32(n)), helper.make_tensor("dq4.zp", TensorProto.INT4, [n], [0] * n),
        _init("mmi.w", i8(k, n)), _init("mmi.zp", np.array(0, np.int8)),
        _init("dqmm.w", i8(k, n)), _init("dqmm.s", np.array(0.1, np.float32)), _init("dqmm.b", f32(n) * 0.5),
        _init("qlmm.w", u8(k, n)), _init("qlmm.ws", np.array(0.1, np.float32)), _init("qlmm.wz", np.array(0, np.uint8)),
        _init("qlmm.as", np.array(0.1, np.float32)), _init("qlmm.az", np.array(0, np.uint8)),
        _init("qlmm.ys", np.array(0.1, np.float32)), _init("qlmm.yz", np.array(0, np.uint8)),
        _init("rotary.cos_cache", f32(128, 16)), _init("rotary.sin_cache", f32(128, 16)),
        _init("shape", np.array([0, 0, 4, 16], np.int64)),
    ]
    ms = "com.microsoft"
    nodes = [
        helper.make_node("MatMulNBits", ["x", "nbits4.q", "nbits4.s", "nbits4.zp"], ["y1"], domain=ms, K=k, N=n,
                         bits=4, block_size=32),
        helper.make_node("MatMulNBits", ["x", "nbits8.q", "nbits8.s"], ["y2"], domain=ms, K=k, N=n, bits=8,
                         block_size=32),
        helper.make_node("GatherBlockQuantized", ["gbq.q", "input_ids", "gbq.s"], ["e"], domain=ms, bits=4,
                         block_size=32, gather_axis=0, quantize_axis=1),
        helper.make_node("DequantizeLinear", ["dq8.w", "dq8.s", "dq8.zp"], ["w8"]),
        helper.make_node("DequantizeLinear", ["dq4.w", "dq4.s", "dq4.zp"], ["w4"], axis=1),
        helper.make_node("MatMulInteger", ["xq", "mmi.w", "", "mmi.zp"], ["y3"]),
        helper.make_node("DynamicQuantizeMatMul", ["x", "dqmm.w", "dqmm.s", "", "dqmm.b"], ["y4"], domain=ms),
        helper.make_node("QLinearMatMul", ["xq", "qlmm.as", "qlmm.az", "qlmm.w", "qlmm.ws", "qlmm.wz", "qlmm.ys",
                                           "qlmm.yz"], ["y5"]),
        helper.make_node("GroupQueryAttention", ["x", "", "", "pk", "pv", "sl", "tl", "rotary.cos_cache",
                                                 "rotary.sin_cache"], ["a", "ok", "ov"], domain=ms, num_heads=4,
                         kv_num_heads=4),
        helper.make_node("Reshape", ["x", "shape"], ["x4"]),
    ]
    graph = helper.make_graph(nodes, "quantized", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ms, 1)])
    (tmp_path / "q").mkdir()
    onnx.save(model, str(tmp_path / "q" / "model.onnx"))
    count = count_params(tmp_path / "q")
    logical = {"nbits4": n * k, "nbits8": n * k, "gbq": v * k, "dq8": k * n, "dq4": k * n, "mmi": k * n,
               "dqmm": k * n + n, "qlmm": k * n}  # dqmm + its float bias
    assert count.total == sum(logical.values())
    assert count.by_dtype == {"int8": 5 * k * n, "int4": 2 * n * k + v * k, "float32": n}


def _hf_llama(tied: bool, vocab: int = 256) -> Any:
    """A tiny random transformers Llama whose norm weights differ (so no two tensors are equal by chance:
    the TorchScript exporter stores identical initializers once)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the export wrapper uses the transformers 5 cache API")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512,
                                      tie_word_embeddings=tied, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return hf


@pytest.fixture(scope="module")
def llama_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tied and untied tiny Llamas exported to the optimum signature (torch.onnx), each also quantized
    by onnxruntime's own tools: int4 MatMulNBits (MatMulNBitsQuantizer) and int8 MatMulInteger
    (quantize_dynamic, which also quantizes the embedding table)."""
    pytest.importorskip("torch")
    from test_models_runner import _export_llama

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root = tmp_path_factory.mktemp("llama-exports")
    out: dict[str, Any] = {}
    import logging

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # the quantizers log every node at INFO
    try:
        _quantized_exports(root, out, _export_llama, MatMulNBitsQuantizer, quantize_dynamic, QuantType)
    finally:
        logging.getLogger().setLevel(level)
    return out


def _quantized_exports(root: Path, out: dict[str, Any], _export_llama: Any, MatMulNBitsQuantizer: Any,
                       quantize_dynamic: Any, QuantType: Any) -> None:
    for tied in (True, False):
        hf = _hf_llama(tied)
        name = "tied" if tied else "untied"
        fp32 = root / name / "fp32"
        _export_llama(hf, fp32 / "model.onnx", position_ids=True)
        hf.config.to_json_file(str(fp32 / "config.json"))
        q4 = MatMulNBitsQuantizer(onnx.load(str(fp32 / "model.onnx")), block_size=32, is_symmetric=True)
        q4.process()
        (root / name / "int4").mkdir()
        q4.model.save_model_to_file(str(root / name / "int4" / "model.onnx"), use_external_data_format=True)
        (root / name / "int8").mkdir()
        quantize_dynamic(str(fp32 / "model.onnx"), str(root / name / "int8" / "model.onnx"),
                         weight_type=QuantType.QInt8)
        out[name] = {"hf": hf, "fp32": fp32, "int4": root / name / "int4", "int8": root / name / "int8"}


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_count_params_of_torch_exports_equals_transformers(llama_exports: dict[str, Any], tied: bool,
                                                           precision: str, tmp_path: Path) -> None:
    import shutil

    from greenprof.models.inspect import count_params

    exp = llama_exports["tied" if tied else "untied"]
    expected = exp["hf"].num_parameters()  # the tied head once
    folder = exp[precision]
    count = count_params(folder)
    if precision == "fp32":
        # the exporter writes the tied head as a transposed copy of the embedding: found and counted once
        assert count.total == expected and count.tied_embeddings is tied and count.notes == []
        assert count.shared == (256 * 64 if tied else 0)
        return
    # quantized apart from the embedding, the head's values cannot be compared: without config.json
    # both are counted and the count says so; config.json's tie_word_embeddings settles it
    assert count.total == expected + (256 * 64 if tied else 0) and count.tied_embeddings is None
    assert "no config.json says whether they are tied: both are counted" in count.notes[0]
    shutil.copy(exp["fp32"] / "config.json", folder / "config.json")
    try:
        count = count_params(folder)
    finally:
        (folder / "config.json").unlink()
    assert count.total == expected and count.tied_embeddings is tied
    assert count.precision == precision
    big = max(count.by_dtype, key=count.by_dtype.get)
    assert big == ("int4" if precision == "int4" else "int8")


def test_count_params_of_an_onnxruntime_genai_export(tmp_path: Path) -> None:
    """onnxruntime-genai's model builder (int4, CPU) from a saved tiny Llama: same count as transformers,
    and `models info` reads the folder."""
    import json as _json
    import subprocess
    import sys

    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    from transformers import PreTrainedTokenizerFast
    from typer.testing import CliRunner

    from greenprof.models.cli import app
    from greenprof.models.inspect import count_params
    from greenprof.models.tokenizer import EOS_TOKEN, build_tokenizer

    hf = _hf_llama(tied=True, vocab=320)
    hf.save_pretrained(tmp_path / "hf")
    PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(320), eos_token=EOS_TOKEN).save_pretrained(
        str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tmp_path / "hf"), "-o",
                        str(tmp_path / "genai"), "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    count = count_params(tmp_path / "genai")
    assert count.total == hf.num_parameters()
    assert count.tied_embeddings is True and count.precision == "int4"
    res = CliRunner().invoke(app, ["info", str(tmp_path / "genai"), "--json"])
    assert res.exit_code == 0, res.output
    doc = _json.loads(res.stdout)
    assert doc["format"] == "genai" and doc["params"] == hf.num_parameters()
    assert (doc["layers"], doc["hidden"], doc["heads"], doc["kv_heads"], doc["head_dim"], doc["vocab"]) == \
        (2, 64, 4, 2, 16, 320)
    assert doc["kv_dtype"] == "float32" and doc["precision"] == "int4" and doc["tokenizer"] is True
    files = {p.name: p.stat().st_size for p in (tmp_path / "genai").iterdir() if p.name.startswith("model.onnx")}
    assert doc["files"] == files and doc["file_bytes"] == sum(files.values())


def test_models_info_of_an_optimum_export(llama_exports: dict[str, Any], tmp_path: Path) -> None:
    import json as _json
    import shutil

    from typer.testing import CliRunner

    from greenprof.models.cli import app

    exp = llama_exports["untied"]
    folder = tmp_path / "export"
    shutil.copytree(exp["int4"], folder)
    shutil.copy(exp["fp32"] / "config.json", folder / "config.json")
    byte_tokenizer(folder / "tokenizer.json")
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    doc = _json.loads(res.stdout)
    assert doc["format"] == "optimum" and doc["architecture"] == "llama" and "metadata" not in doc
    assert doc["params"] == exp["hf"].num_parameters() and doc["precision"] == "int4"
    assert (doc["layers"], doc["hidden"], doc["heads"], doc["kv_heads"], doc["head_dim"], doc["vocab"]) == \
        (2, 64, 4, 2, 16, 256)
    assert doc["kv_dtype"] == "float32" and doc["tokenizer"] is True and doc["tied_embeddings"] is False
    assert doc["context_length"] == 512
    assert doc["file_bytes"] == sum(p.stat().st_size for p in folder.iterdir() if ".onnx" in p.name)
    table = runner.invoke(app, ["info", str(folder / "model.onnx")]).stdout
    assert "optimum export" in table and f"{exp['hf'].num_parameters():,}" in table and "int4" in table
    # a genai folder made by hand (the toy), without config.json
    toy = tmp_path / "genai"
    toy_decoder(toy / "decoder.onnx", layers=3, kv_heads=2, head_dim=4, vocab=32, position_ids=False)
    genai_config(toy, "decoder.onnx", layers=3, kv_heads=2, head_dim=4, vocab=32)
    doc = _json.loads(runner.invoke(app, ["info", str(toy), "--json"]).stdout)
    assert doc["format"] == "genai" and doc["layers"] == 3 and (doc["kv_heads"], doc["head_dim"]) == (2, 4)
    assert doc["hidden"] == 8 and doc["vocab"] == 32 and doc["tokenizer"] is False and doc["context_length"] == 2048


def test_measure_stores_the_parameter_count_of_an_export(llama_exports: dict[str, Any], tmp_path: Path) -> None:
    """`greenprof measure ./export` stores params from the ONNX initializers with every run."""
    import json as _json
    import sqlite3
    import subprocess
    import sys

    folder = llama_exports["untied"]["int4"]
    db = tmp_path / "m.db"
    r = subprocess.run([sys.executable, "-m", "greenprof.cli", "measure", str(folder), "--runs", "2", "--warmup",
                        "0", "--new-tokens", "3", "--prompt-tokens", "4", "--db", str(db), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = llama_exports["untied"]["hf"].num_parameters()
    doc = _json.loads(r.stdout)
    assert [s["params"] for s in doc["summary"]] == [expected]
    with sqlite3.connect(db) as c:
        assert c.execute("select param_count from runs").fetchall() == [(expected,), (expected,)]
