"""The built-in random-weight model family: shapes, ONNX builder, tokenizer, `greenprof models` CLI.

Everything here builds only the `tiny` shape (and tiny custom shapes), so the file runs in a few
seconds. The models are run with the real onnxruntime.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from greenprof.errors import GreenprofError, UsageError
from greenprof.models import builder
from greenprof.models.builder import build, file_hash, is_built, model_dir, read_metadata
from greenprof.models.shapes import SHAPES, ModelShape, get_shape, param_count
from greenprof.models.tokenizer import EOS_TOKEN_ID, build_tokenizer

ort = pytest.importorskip("onnxruntime")

# Published parameter counts (model cards / HF "Safetensors" totals), independent of our code.
PUBLISHED_PARAMS = {
    "smollm-135m": 134.5e6,
    "smollm-360m": 361.8e6,
    "smollm-1.7b": 1.71e9,
    "phi-3-mini": 3.82e9,
    "llama-2-7b": 6.74e9,
    "mistral-nemo-12b": 12.25e9,
    "falcon-40b": 41.3e9,  # about 41.3 B with the tied head counted once (see test_falcon.py)
}

# A tiny untied shape: separate LM head (the path the 3.8B-12B shapes take), head_dim 32,
# a single kv head shared by 4 query heads.
TINY_UNTIED = ModelShape("tiny-untied", hidden=64, layers=2, heads=4, kv_heads=1, head_dim=32, intermediate=96,
                         vocab=300, tied_embeddings=False, rope_theta=500000.0, max_position=256)


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache shared by the read-only tests of this module."""
    return tmp_path_factory.mktemp("models-cache")


def session(folder: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def empty_past(shape: ModelShape, batch: int = 1) -> list[np.ndarray]:
    return [np.zeros((batch, shape.kv_heads, 0, shape.head_dim), np.float32)] * (2 * shape.layers)


def step(sess: ort.InferenceSession, shape: ModelShape, ids: np.ndarray, past: list[np.ndarray]):
    """One forward pass with the optimum signature; returns (logits, presents)."""
    batch, n = ids.shape
    past_len = past[0].shape[2]
    feed = {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((batch, past_len + n), np.int64),
        "position_ids": np.tile(np.arange(past_len, past_len + n, dtype=np.int64), (batch, 1)),
    }
    for i in range(shape.layers):
        feed[f"past_key_values.{i}.key"] = past[2 * i]
        feed[f"past_key_values.{i}.value"] = past[2 * i + 1]
    out = sess.run(None, feed)
    names = [o.name for o in sess.get_outputs()]
    assert names[0] == "logits"
    return out[0], out[1:]


def cached_vs_full(folder: Path, shape: ModelShape, prompt: int = 7, new: int = 6, batch: int = 1):
    """Logits of one full pass vs. prompt-with-empty-past then one token at a time with the cache."""
    sess = session(folder)
    ids = np.random.default_rng(3).integers(0, shape.vocab, (batch, prompt + new))
    full, presents = step(sess, shape, ids, empty_past(shape, batch))
    assert presents[0].shape == (batch, shape.kv_heads, prompt + new, shape.head_dim)
    logits, past = step(sess, shape, ids[:, :prompt], empty_past(shape, batch))
    pieces = [logits]
    for j in range(prompt, prompt + new):
        logits, past = step(sess, shape, ids[:, j:j + 1], past)
        pieces.append(logits)
    return full, np.concatenate(pieces, axis=1)


def reference_logits(folder: Path, shape: ModelShape, ids: np.ndarray) -> np.ndarray:
    """A plain numpy Llama forward pass (float64) over the fp32 weights stored in the model."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t).astype(np.float64)
         for t in onnx.load(str(folder / "model.onnx")).graph.initializer}
    b, n = ids.shape
    d, h, kv = shape.head_dim, shape.heads, shape.kv_heads

    def rms(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + shape.rms_eps) * gamma

    inv_freq = 1.0 / shape.rope_theta ** (np.arange(0, d, 2) / d)
    angles = np.outer(np.arange(n), inv_freq)
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

    def rotary(t: np.ndarray) -> np.ndarray:  # HF Llama rotate_half
        return t * cos + np.concatenate([-t[..., d // 2:], t[..., : d // 2]], -1) * sin

    causal = np.triu(np.full((n, n), -np.inf), 1)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(shape.layers):
        p = f"model.layers.{i}"
        hn = rms(x, w[f"{p}.input_layernorm.weight"])
        qkv = hn @ w[f"{p}.attn.qkv_proj.weight"]
        q = qkv[..., : h * d].reshape(b, n, h, d).transpose(0, 2, 1, 3)
        k = qkv[..., h * d:(h + kv) * d].reshape(b, n, kv, d).transpose(0, 2, 1, 3)
        v = qkv[..., (h + kv) * d:].reshape(b, n, kv, d).transpose(0, 2, 1, 3)
        q, k = rotary(q), rotary(k)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)  # HF repeat_kv
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, h * d)
        x = x + attn @ w[f"{p}.attn.o_proj.weight"]
        hn = rms(x, w[f"{p}.post_attention_layernorm.weight"])
        gate_up = hn @ w[f"{p}.mlp.gate_up_proj.weight"]  # gate columns, then up columns
        gate, up = gate_up[..., : shape.intermediate], gate_up[..., shape.intermediate:]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}.mlp.down_proj.weight"]
    hn = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"].T if shape.tied_embeddings else w["lm_head.weight"]
    return hn @ head


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_param_count_matches_published(name: str) -> None:
    published = PUBLISHED_PARAMS[name]
    assert abs(param_count(get_shape(name)) - published) / published < 0.01


def test_registry_has_the_canonical_names() -> None:
    assert list(SHAPES) == ["tiny", "smollm-135m", "smollm-360m", "smollm-1.7b", "phi-3-mini", "llama-2-7b",
                            "mistral-nemo-12b", "falcon-40b"]
    assert get_shape("SmolLM-135M") is SHAPES["smollm-135m"]
    nemo = get_shape("mistral-nemo-12b")
    assert (nemo.head_dim, nemo.kv_heads, nemo.vocab, nemo.tied_embeddings) == (128, 8, 131072, False)


def test_unknown_shape_lists_known_names() -> None:
    with pytest.raises(UsageError, match=r"smollm-135m.*mistral-nemo-12b, falcon-40b"):
        get_shape("gpt-5")


def test_build_rejects_unknown_name_and_precision(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="known models"):
        build("no-such-model", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="fp32, int8, int4"):
        build("tiny", "fp16", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_invalid_shape_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="multiple of kv_heads"):
        ModelShape("bad", hidden=64, layers=1, heads=3, kv_heads=2, head_dim=16, intermediate=64, vocab=300,
                   tied_embeddings=True)


# --------------------------------------------------------------------------- graph correctness


@pytest.mark.parametrize("attention", ["gqa", "plain"])
def test_tiny_fp32_cached_decode_equals_full_recomputation(cache: Path, attention: str) -> None:
    shape = get_shape("tiny")
    folder = build("tiny", "fp32", cache, attention=attention)
    full, cached = cached_vs_full(folder, shape)
    assert full.shape == (1, 13, shape.vocab)
    assert np.isfinite(full).all()
    assert np.abs(full - cached).max() <= 1e-4


def test_tiny_fp32_matches_numpy_llama_reference(cache: Path) -> None:
    shape = get_shape("tiny")
    ids = np.random.default_rng(5).integers(0, shape.vocab, (2, 9))
    expected = reference_logits(build("tiny", "fp32", cache), shape, ids)
    for attention in ("gqa", "plain"):
        logits, _ = step(session(build("tiny", "fp32", cache, attention=attention)), shape, ids,
                         empty_past(shape, batch=2))
        assert np.abs(logits - expected).max() <= 1e-4, attention


def test_untied_custom_shape_matches_reference_and_caches(tmp_path: Path) -> None:
    folder = build(TINY_UNTIED, "fp32", tmp_path)
    ids = np.random.default_rng(6).integers(0, TINY_UNTIED.vocab, (1, 8))
    logits, _ = step(session(folder), TINY_UNTIED, ids, empty_past(TINY_UNTIED))
    assert np.abs(logits - reference_logits(folder, TINY_UNTIED, ids)).max() <= 1e-4
    full, cached = cached_vs_full(folder, TINY_UNTIED, batch=2)
    assert np.abs(full - cached).max() <= 1e-4


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("shape", [get_shape("tiny"), TINY_UNTIED], ids=["tied", "untied"])
def test_quantized_models_run_with_finite_logits(cache: Path, precision: str, shape: ModelShape) -> None:
    folder = build(shape, precision, cache)
    full, cached = cached_vs_full(folder, shape)
    assert full.shape == (1, 13, shape.vocab)
    assert np.isfinite(full).all() and np.isfinite(cached).all()
    assert 0 < np.abs(full).max() < 100
    assert np.abs(full - cached).max() <= 1e-3
    meta = read_metadata(folder)
    assert meta["quantization"]["bits"] == {"int8": 8, "int4": 4}[precision]
    assert meta["quantization"]["block_size"] == 32


def test_signature_is_optimum_layout(cache: Path) -> None:
    shape = get_shape("tiny")
    sess = session(build("tiny", "int4", cache))
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["input_ids"].type == "tensor(int64)"
    assert inputs["past_key_values.1.value"].type == "tensor(float)"
    assert inputs["past_key_values.1.value"].shape[1:4:2] == [shape.kv_heads, shape.head_dim]
    assert outputs == ["logits"] + [f"present.{i}.{k}" for i in range(shape.layers) for k in ("key", "value")]


def test_tied_quantized_head_shares_the_embedding_bytes(cache: Path) -> None:
    import onnx

    model = onnx.load(str(build("tiny", "int4", cache) / "model.onnx"), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer}
    assert where["lm_head.qweight"] == where["model.embed_tokens.qweight"]
    assert where["lm_head.scales"] == where["model.embed_tokens.scales"]
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryAttention", "MatMulNBits", "GatherBlockQuantized", "SkipSimplifiedLayerNormalization"} <= ops
    assert "MatMul" not in ops


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_projections_are_packed_and_parameters_unchanged(cache: Path, precision: str) -> None:
    """q|k|v and gate|up are one matmul each (4 per layer + the head); the stored weights hold
    exactly param_count parameters (quantized: 2 codes per byte in int4)."""
    import onnx

    shape = get_shape("tiny")
    model = onnx.load(str(build("tiny", precision, cache) / "model.onnx"), load_external_data=False)
    matmul = "MatMul" if precision == "fp32" else "MatMulNBits"
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(matmul) == 4 * shape.layers + 1
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for i in range(shape.layers):
        p = f"model.layers.{i}.mlp.gate_up_proj"
        if precision == "fp32":
            assert dims[f"{p}.weight"] == [shape.hidden, 2 * shape.intermediate]
        else:
            assert dims[f"{p}.qweight"][0] == 2 * shape.intermediate
        assert not any(".gate_proj." in n or ".up_proj." in n for n in dims)
    if precision == "fp32":
        weights = sum(int(np.prod(d)) for n, d in dims.items() if n.endswith(".weight"))
    else:
        per_byte = 8 // read_metadata(build("tiny", precision, cache))["quantization"]["bits"]
        # Quantized matmul/embedding codes (the tied head aliases the embedding) + fp32 norm weights.
        weights = sum(int(np.prod(d)) * per_byte for n, d in dims.items()
                      if n.endswith(".qweight") and not n.startswith("lm_head"))
        weights += sum(int(np.prod(d)) for n, d in dims.items() if n.endswith(".weight"))
    assert weights == param_count(shape)


def test_model_passes_onnx_checker(cache: Path) -> None:
    import onnx

    for precision in ("fp32", "int4"):
        onnx.checker.check_model(str(build("tiny", precision, cache) / "model.onnx"))


# -------------------------------------------------------------------- files, cache, metadata


def test_same_seed_gives_same_bytes(tmp_path: Path) -> None:
    a = build("tiny", "int4", tmp_path / "a")
    b = build("tiny", "int4", tmp_path / "b")
    meta_a, meta_b = read_metadata(a), read_metadata(b)
    assert meta_a["model_sha256"] == meta_b["model_sha256"]
    for name in ("model.onnx", "model.onnx.data", "tokenizer.json"):
        assert file_hash(a / name) == file_hash(b / name) == meta_a["files"][name]["sha256"]
        assert (a / name).stat().st_size == meta_a["files"][name]["bytes"]
    # Another precision is another model.
    assert read_metadata(build("tiny", "int8", tmp_path / "a"))["model_sha256"] != meta_a["model_sha256"]


def test_second_build_is_a_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPROF_CACHE", str(tmp_path))
    calls: list[tuple[int, int]] = []
    folder = build("tiny", "fp32", progress=lambda done, total: calls.append((done, total)))
    assert folder == tmp_path / f"tiny-fp32-b{builder.BUILDER_VERSION}" == model_dir("tiny", "fp32")
    assert calls and calls[-1][0] == calls[-1][1] > 0
    assert all(d1 <= d2 for (d1, _), (d2, _) in itertools.pairwise(calls))
    mtimes = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    calls.clear()
    started = time.perf_counter()
    assert build("tiny", "fp32", progress=lambda d, t: calls.append((d, t))) == folder
    assert time.perf_counter() - started < 0.5
    assert calls == []
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == mtimes
    assert is_built("tiny", "fp32") and not is_built("tiny", "int4")
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folders left


def test_incomplete_model_is_rebuilt(tmp_path: Path) -> None:
    folder = build("tiny", "fp32", tmp_path)
    (folder / "model.onnx.data").write_bytes(b"truncated")
    assert not is_built("tiny", "fp32", tmp_path)
    assert build("tiny", "fp32", tmp_path) == folder
    assert file_hash(folder / "model.onnx.data") == read_metadata(folder)["files"]["model.onnx.data"]["sha256"]


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build("tiny", "fp32", tmp_path, progress=interrupt)
    assert not model_dir("tiny", "fp32", tmp_path).exists()
    assert list(tmp_path.iterdir()) == []  # the temp folder is gone too
    # A build killed without cleanup (its pid is dead) leaves a temp folder the next build removes.
    stale = tmp_path / f".tmp-tiny-fp32-b{builder.BUILDER_VERSION}-999999999-dead"
    stale.mkdir()
    build("tiny", "fp32", tmp_path)
    assert not stale.exists()


def test_unwritable_cache_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # mkdir under a file fails, even for root
    with pytest.raises(GreenprofError, match="GREENPROF_CACHE"):
        build("tiny", "fp32", blocker / "cache")


def test_metadata_is_complete(cache: Path) -> None:
    folder = build("tiny", "int4", cache)
    meta = read_metadata(folder)
    assert meta == read_metadata(folder / "model.onnx") == read_metadata(folder / "greenprof-model.json")
    shape = get_shape("tiny")
    assert meta["name"] == "tiny" and meta["precision"] == "int4"
    assert meta["shape"] == shape.to_dict()
    assert meta["param_count"] == param_count(shape)
    assert meta["builder_version"] == builder.BUILDER_VERSION
    assert meta["opset"] == {"": 21, "com.microsoft": 1}
    assert meta["eos_token_id"] == EOS_TOKEN_ID
    assert meta["context_length"] == 2048
    sig_inputs = [i["name"] for i in meta["signature"]["inputs"]]
    assert sig_inputs[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert meta["signature"]["outputs"][0] == {"name": "logits", "dtype": "float32",
                                               "shape": ["batch_size", "sequence_length", shape.vocab]}
    assert set(meta["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json"}
    assert meta["created"].endswith("+00:00")


def test_metadata_reads_without_loading_onnx_or_onnxruntime(cache: Path) -> None:
    folder = build("tiny", "fp32", cache)
    code = (
        "import sys; from greenprof.models.builder import read_metadata; "
        f"m = read_metadata({str(folder)!r}); assert m['name'] == 'tiny'; "
        "heavy = [x for x in ('onnx', 'onnxruntime', 'numpy', 'tokenizers') if x in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_metadata_of_a_foreign_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(UsageError, match="not a model built"):
        read_metadata(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        read_metadata(tmp_path / "missing")


def test_imports_are_cheap() -> None:
    code = (
        "import sys; import greenprof.models.shapes, greenprof.models.builder, greenprof.models.tokenizer, "
        "greenprof.models.cli; "
        "heavy = [x for x in ('onnx', 'onnxruntime', 'numpy', 'tokenizers') if x in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("vocab", [512, 49152])
def test_tokenizer_decodes_every_id(vocab: int) -> None:
    tok = build_tokenizer(vocab)
    assert tok.get_vocab_size() == vocab
    texts = tok.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
    assert all(isinstance(t, str) and t for t in texts)
    assert texts[EOS_TOKEN_ID] == "<|endoftext|>"
    assert len(set(tok.get_vocab().values())) == vocab


def test_tokenizer_round_trips_text_one_token_per_byte(cache: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(build("tiny", "fp32", cache) / "tokenizer.json"))
    text = "Energy per token: 0.07 J — ça coûte 🌍"
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.get_vocab_size() == get_shape("tiny").vocab


def test_tokenizer_rejects_too_small_vocab() -> None:
    with pytest.raises(UsageError, match="at least 257"):
        build_tokenizer(100)


# ---------------------------------------------------------------------------------------- CLI


def test_cli_list_info_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from greenprof.models.cli import app

    monkeypatch.setenv("GREENPROF_CACHE", str(tmp_path))
    runner = CliRunner()

    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["cache"] == str(tmp_path)
    assert [m["name"] for m in doc["models"]] == list(SHAPES)
    tiny = doc["models"][0]
    assert tiny["params"] == param_count(get_shape("tiny"))
    assert set(tiny["precisions"]) == {"fp32", "int8", "int4"}
    assert not tiny["precisions"]["int4"]["built"]

    res = runner.invoke(app, ["build", "tiny", "--precision", "int4"])
    assert res.exit_code == 0, res.output
    folder = Path(res.stdout.strip())
    assert folder == model_dir("tiny", "int4") and is_built("tiny", "int4")

    doc = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    entry = doc["models"][0]["precisions"]["int4"]
    assert entry["built"] and entry["path"] == str(folder) and entry["bytes"] > 0
    assert "tiny" in runner.invoke(app, ["list"]).stdout

    res = runner.invoke(app, ["info", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["metadata"] == read_metadata(folder)
    assert doc["format"] == "greenprof" and doc["params"] == param_count(get_shape("tiny"))
    assert (doc["layers"], doc["hidden"], doc["heads"], doc["kv_heads"], doc["vocab"]) == (2, 64, 4, 2, 512)
    assert doc["precision"] == "int4" and doc["kv_dtype"] == "float32" and doc["tokenizer"] is True
    assert doc["file_bytes"] == sum(f["bytes"] for n, f in doc["metadata"]["files"].items() if n != "tokenizer.json")
    res = runner.invoke(app, ["info", "tiny", "-p", "int4"])
    assert res.exit_code == 0 and "int4" in res.stdout and "MatMulNBits" in res.stdout

    res = runner.invoke(app, ["build", "nope"])
    assert isinstance(res.exception, UsageError) and "known models" in str(res.exception)
    res = runner.invoke(app, ["info", "tiny", "-p", "int8"])
    assert isinstance(res.exception, UsageError) and "not built" in str(res.exception)
    res = runner.invoke(app, ["info", str(tmp_path / "nothing-here")])
    assert isinstance(res.exception, UsageError) and "does not exist" in str(res.exception)


def test_info_of_an_unknown_name_lists_the_built_in_names(tmp_path: Path) -> None:
    """`greenprof models info nosuch`: one line naming the built-in models, exit 2 (issue 10)."""
    r = subprocess.run([sys.executable, "-m", "greenprof.cli", "models", "info", "nosuch"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"unknown model 'nosuch' (built-in names: {', '.join(SHAPES)})" in lines[0]
