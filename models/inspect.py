"""What an ONNX decoder export is, read from its graph without loading its weights.

:func:`count_params` counts the parameters of any decoder export (greenprof's built-in models,
optimum exports, onnxruntime-genai folders) from the graph's initializers, the way
``sum(p.numel() for p in model.parameters())`` counts them in the framework it came from:

* Only weights count: floating-point tensors, and integer tensors that a quantized op reads as
  its weight. Quantization metadata (scales, zero points, ``g_idx``), shape and index constants
  (int64, bool), scalars, and precomputed rotary cos/sin caches and attention masks (buffers,
  not parameters) do not.
* Packed weights count as the logical weights they hold: a com.microsoft ``MatMulNBits`` weight
  as its ``N x K`` (whatever the packing), a ``GatherBlockQuantized`` table as ``8 / bits`` values
  per byte, ``MatMulInteger`` / ``DynamicQuantizeMatMul`` / ``QLinearMatMul`` /
  ``MatMulIntegerToFloat`` / ``DequantizeLinear`` / ``QGemm`` weights and int8 tables read by a
  ``Gather`` (onnxruntime's ``quantize_dynamic`` embedding) element for element (ONNX ``INT4`` /
  ``UINT4`` tensors already have logical dims).
* Shared weights count once: initializers stored at the same place of the same external data
  file (greenprof's tied int8/int4 head), and, among the tensors as large as the vocabulary (the
  embedding and the LM head), copies with the same values, also transposed (what the TorchScript
  exporter writes for a tied head): compared on a few seeded sample positions read straight from
  the files. A tied head quantized apart from the embedding (an fp32 table beside an int4 head,
  or two int8 tensors with their own scales) holds the same weights only when ``config.json``
  says ``tie_word_embeddings: true``; without that key both are counted and
  :attr:`ParamCount.notes` says so.

Everything is read with ``onnx.load(..., load_external_data=False)``: the graph and the
initializers' dims, never the external weights (the sample comparison reads a few bytes at
known offsets). A 12B export is counted in well under a second.

:func:`inspect_model` adds the rest of what ``greenprof models info PATH`` prints: format, layers,
hidden size, heads, kv heads, vocabulary, KV dtype, precision, file sizes, tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ParamCount", "count_params", "inspect_model", "params_of"]

# ONNX TensorProto data types by number (stable across onnx versions), as numpy-style names.
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
           10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16", 17: "float8e4m3fn",
           18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4"}
_FLOATS = {"float32", "float16", "float64", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
           "float8e5m2fnuz"}
_ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "bfloat16": 2, "uint8": 1, "int8": 1, "int32": 4,
             "int64": 8}
_PRECISION_OF = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int8": "int8",
                 "uint8": "int8", "int4": "int4", "uint4": "int4"}

# op_type -> input slots that hold quantization metadata (never parameters).
_QUANT_META = {
    "MatMulNBits": {2, 3, 4},  # scales, zero_points, g_idx
    "GatherBlockQuantized": {2, 3},  # scales, zero_points
    "MatMulBnb4": {2},  # absmax
    "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "MatMulInteger": {2, 3},
    "DynamicQuantizeMatMul": {2, 3},
    "MatMulIntegerToFloat": {2, 3, 4, 5},
    "DequantizeLinear": {1, 2},
    "QuantizeLinear": {1, 2},
    "QGemm": {1, 2, 4, 5, 7, 8},
    "QLinearConv": {1, 2, 4, 5, 6, 7},
    "QAttention": {3, 4, 6, 7},
    "DynamicQuantizeLSTM": {4, 5, 6, 7},
}
# op_type -> input slots that hold an integer weight counted element for element.
_QUANT_WEIGHT = {
    "QLinearMatMul": {0, 3}, "MatMulInteger": {0, 1}, "DynamicQuantizeMatMul": {1},
    "MatMulIntegerToFloat": {0, 1}, "DequantizeLinear": {0}, "QGemm": {0, 3}, "QLinearConv": {0, 3},
    "QAttention": {1},
}
# (op_type, input slot) pairs that hold rotary cos/sin caches: precomputed buffers, not parameters.
_ROTARY_SLOTS = {("GroupQueryAttention", 7), ("GroupQueryAttention", 8), ("RotaryEmbedding", 2),
                 ("RotaryEmbedding", 3), ("SparseAttention", 8), ("SparseAttention", 9)}
# Names of buffers that exporters turn into float initializers (rotary tables, causal masks).
_BUFFER_NAME = re.compile(r"(^|[./_:])(cos|sin)(_cached?|_cache|_full|_table)?($|[./_:])|inv_freq|rotary|"
                          r"causal_mask|(^|\.)attn\.bias$|masked_bias", re.IGNORECASE)
_SAMPLES = 8  # positions compared between two candidate copies of the vocabulary matrix


@dataclass
class ParamCount:
    """Parameters of one ONNX export (see the module docs for what counts)."""

    total: int
    #: logical weights per storage type: {"float32": n, "int4": n, ...}
    by_dtype: dict[str, int]
    #: weights not counted again because another initializer holds them (tied head, aliases)
    shared: int = 0
    #: True when the LM head was found to be (or declared) the embedding; None when unknown
    tied_embeddings: bool | None = None
    #: the matrix as large as the vocabulary: (rows, cols) of the embedding, when found
    embedding_shape: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str | None:
        """The storage type holding most of the weights: fp32, fp16, bf16, int8, int4 (None: no weights)."""
        if not self.by_dtype:
            return None
        kind = max(self.by_dtype, key=lambda k: self.by_dtype[k])
        return _PRECISION_OF.get(kind, kind)


@dataclass
class _Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]
    proto: Any
    graph_dir: Path

    @property
    def numel(self) -> int:
        return math.prod(self.dims) if self.dims else 1

    def location(self) -> tuple[str, int, int] | None:
        """(file, offset, length) for external data, else None."""
        if self.proto is None or self.proto.data_location != 1:  # TensorProto.EXTERNAL
            return None
        info = {e.key: e.value for e in self.proto.external_data}
        loc = info.get("location")
        if not loc:
            return None
        length = int(info["length"]) if "length" in info else -1
        return loc, int(info.get("offset", 0) or 0), length


@dataclass
class _Weight:
    tensor: _Tensor
    logical: int
    kind: str  # storage type of the logical weights: float32, float16, int8, int4, ...
    rows_cols: tuple[int, int] | None  # the logical matrix's two dims (either order), if 2-D


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph (If branches of optimum's merged decoders, Loop bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == 5:  # GRAPH
                yield from _graphs(attr.g)
            elif attr.type == 10:  # GRAPHS
                for g in attr.graphs:
                    yield from _graphs(g)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == 2 else a.f if a.type == 1 else a.s.decode() if a.type == 3 else default
    return default


def _load_graph(model_file: Path) -> Any:
    import onnx

    from .errors import CorruptModel

    try:
        return onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CorruptModel(f"cannot parse {model_file} as ONNX ({type(exc).__name__}): re-download or "
                           "re-export the model") from exc


def _tensors(model: Any, folder: Path) -> tuple[dict[str, _Tensor], dict[str, list[tuple[Any, int]]]]:
    """Every initializer (and Constant node tensor) by name, and each tensor's consumers (node, slot)."""
    tensors: dict[str, _Tensor] = {}
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for g in _graphs(model.graph):
        for t in g.initializer:
            tensors.setdefault(t.name, _Tensor(t.name, _DTYPES.get(t.data_type, str(t.data_type)),
                                               tuple(int(d) for d in t.dims), t, folder))
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == 4:  # TENSOR
                        t = a.t
                        tensors.setdefault(node.output[0], _Tensor(
                            node.output[0], _DTYPES.get(t.data_type, str(t.data_type)),
                            tuple(int(d) for d in t.dims), t, folder))
            for slot, name in enumerate(node.input):
                if name:
                    consumers.setdefault(name, []).append((node, slot))
    return tensors, consumers


def _as_weight(t: _Tensor, uses: list[tuple[Any, int]]) -> _Weight | None:
    """How ``t`` counts as parameters, or None when it is not a parameter."""
    ops = [(n.op_type, slot) for n, slot in uses]
    if any(slot in _QUANT_META.get(op, ()) for op, slot in ops):
        return None
    if any((op, slot) in _ROTARY_SLOTS for op, slot in ops):
        return None
    for node, slot in uses:
        op = node.op_type
        if op == "MatMulNBits" and slot == 1:
            n, k, bits = _attr(node, "N"), _attr(node, "K"), _attr(node, "bits", 4)
            if n and k:
                return _Weight(t, int(n) * int(k), f"int{bits}", (int(n), int(k)))
        if op == "MatMulBnb4" and slot == 1:
            n, k = _attr(node, "N"), _attr(node, "K")
            if n and k:
                return _Weight(t, int(n) * int(k), "int4", (int(n), int(k)))
        if op == "GatherBlockQuantized" and slot == 0:
            bits = int(_attr(node, "bits", 4))
            per_byte = 8 // bits if t.dtype in ("uint8", "int8") else 1
            rows = t.dims[0] if t.dims else 0
            logical = t.numel * per_byte
            return _Weight(t, logical, f"int{bits}", (rows, logical // rows) if rows else None)
        quant_slot = slot in _QUANT_WEIGHT.get(op, ()) or (op == "Gather" and slot == 0)  # int8 table
        if quant_slot and t.dtype in ("int8", "uint8", "int4", "uint4"):
            return _Weight(t, t.numel, "int4" if t.dtype in ("int4", "uint4") else "int8",
                           t.dims if len(t.dims) == 2 else None)
    if t.dtype not in _FLOATS or t.numel <= 1 or _BUFFER_NAME.search(t.name):
        return None
    return _Weight(t, t.numel, t.dtype, t.dims if len(t.dims) == 2 else None)


def _storage_key(w: _Weight) -> Any:
    loc = w.tensor.location()
    if loc is not None:
        return ("external", os.path.normpath(loc[0]), loc[1], loc[2])
    return ("name", w.tensor.name)


def _read_at(t: _Tensor, flat: list[int]) -> list[bytes] | None:
    """The raw bytes of elements ``flat`` (C order) of a plain (unpacked) tensor, or None."""
    size = _ITEMSIZE.get(t.dtype)
    if size is None or t.proto is None:
        return None
    loc = t.location()
    if loc is not None:
        path = t.graph_dir / loc[0]
        try:
            with open(path, "rb") as fh:
                out = []
                for i in flat:
                    fh.seek(loc[1] + i * size)
                    b = fh.read(size)
                    if len(b) != size:
                        return None
                    out.append(b)
                return out
        except OSError:
            return None
    raw = t.proto.raw_data
    if raw:
        return [bytes(raw[i * size:(i + 1) * size]) for i in flat]
    try:
        from onnx import numpy_helper

        arr = numpy_helper.to_array(t.proto).reshape(-1)
        return [arr[i].tobytes() for i in flat]
    except Exception:
        return None


def _same_matrix(a: _Tensor, b: _Tensor) -> bool:
    """Whether 2-D ``a`` and ``b`` hold the same values, as is or transposed (seeded samples)."""
    if a.dtype != b.dtype or len(a.dims) != 2 or len(b.dims) != 2 or a.numel != b.numel:
        return False
    import numpy as np

    rows, cols = a.dims
    rng = np.random.default_rng(0)
    ij = [(int(rng.integers(rows)), int(rng.integers(cols))) for _ in range(_SAMPLES)]
    va = _read_at(a, [i * cols + j for i, j in ij])
    if va is None or len(set(va)) == 1:  # unreadable, or constant samples (ones, zeros): no evidence
        return False
    for layout in ("same", "transposed"):
        if layout == "same" and b.dims == a.dims:
            vb = _read_at(b, [i * cols + j for i, j in ij])
        elif layout == "transposed" and b.dims == (cols, rows):
            vb = _read_at(b, [j * rows + i for i, j in ij])
        else:
            continue
        if vb == va:
            return True
    return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_PASS_THROUGH = ("Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze")


def _gathered_tables(model: Any, tensors: dict[str, _Tensor]) -> set[str]:
    """Initializers a Gather / GatherBlockQuantized reads as its table, directly or through a
    Reshape / Transpose / Cast (onnxruntime-genai ties the embedding to the head that way)."""
    producer = {out: node for g in _graphs(model.graph) for node in g.node for out in node.output}
    found: set[str] = set()
    for g in _graphs(model.graph):
        for node in g.node:
            if node.op_type not in ("Gather", "GatherBlockQuantized") or not node.input:
                continue
            name, hops = node.input[0], 0
            while name not in tensors and name in producer and hops < 4:
                prev = producer[name]
                if prev.op_type not in _PASS_THROUGH or not prev.input:
                    break
                name, hops = prev.input[0], hops + 1
            if name in tensors:
                found.add(name)
    return found


def _vocab_hint(model: Any, config: dict[str, Any], genai: dict[str, Any]) -> int | None:
    for out in model.graph.output:
        if out.name == "logits" or out.name == (genai.get("model", {}).get("decoder", {}).get("outputs", {})
                                                  .get("logits")):
            dims = out.type.tensor_type.shape.dim
            if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0:
                return int(dims[-1].dim_value)
    for v in (genai.get("model", {}).get("vocab_size"), config.get("vocab_size")):
        if isinstance(v, int) and v > 0:
            return v
    return None


def _count(model: Any, folder: Path, config: dict[str, Any], genai: dict[str, Any]) -> ParamCount:
    tensors, consumers = _tensors(model, folder)
    weights: list[_Weight] = []
    for name, t in tensors.items():
        w = _as_weight(t, consumers.get(name, []))
        if w is not None and w.logical > 0:
            weights.append(w)

    # 1. the same bytes in the same file: one set of weights (deliberate aliases)
    seen: dict[Any, _Weight] = {}
    unique: list[_Weight] = []
    shared = 0
    for w in weights:
        key = _storage_key(w)
        if key in seen:
            shared += w.logical
            continue
        seen[key] = w
        unique.append(w)

    # 2. the vocabulary matrix stored twice (a tied head): same values, maybe transposed
    vocab = _vocab_hint(model, config, genai)
    notes: list[str] = []
    tied: bool | None = None
    embed_shape: tuple[int, int] | None = None
    gather_ops = ("Gather", "GatherBlockQuantized")
    tables = _gathered_tables(model, tensors)
    embeds = [w for w in unique if w.tensor.name in tables and w.rows_cols is not None]
    if vocab is not None:
        embeds = [w for w in embeds if vocab in w.rows_cols] or embeds
    if embeds:
        embed = max(embeds, key=lambda w: w.logical)
        a, b = embed.rows_cols
        embed_shape = (b, a) if (b == vocab if vocab is not None else b > a) else (a, b)
        heads = [w for w in unique if w is not embed and w.rows_cols is not None and w.logical == embed.logical
                 and vocab in (None, *w.rows_cols) and set(w.rows_cols) == set(embed.rows_cols)]
        declared = config.get("tie_word_embeddings")
        if any(w is not embed and _storage_key(w) == _storage_key(embed) for w in weights):
            tied = True  # the head reads the embedding's bytes (step 1)
        if any(n.op_type not in gather_ops for n, _ in consumers.get(embed.tensor.name, [])):
            tied = True  # the head reads the embedding tensor itself (MatMul, Transpose)
        undecided = []
        for w in heads:
            if w.kind != embed.kind or w.kind not in _FLOATS:
                undecided.append(w)  # quantized apart, or another precision: values not comparable
            elif _same_matrix(embed.tensor, w.tensor):
                unique.remove(w)
                shared += w.logical
                tied = True
        if undecided and tied is None and declared is True:
            for w in undecided:
                unique.remove(w)
                shared += w.logical
            tied = True
            notes.append(f"the LM head ({undecided[0].kind}) and the embedding ({embed.kind}) are stored apart; "
                         "config.json says they are tied, so they are counted once")
        elif undecided and tied is None and declared is None:
            notes.append(f"the LM head ({undecided[0].kind}) and the embedding ({embed.kind}) are stored apart "
                         "and no config.json says whether they are tied: both are counted")
        elif tied is None and (heads or declared is False):
            tied = False
    by_dtype: dict[str, int] = {}
    for w in unique:
        by_dtype[w.kind] = by_dtype.get(w.kind, 0) + w.logical
    return ParamCount(total=sum(by_dtype.values()), by_dtype=dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
                      shared=shared, tied_embeddings=tied, embedding_shape=embed_shape, notes=notes)


def _resolve(path: str | os.PathLike[str]) -> tuple[Path, Path, str, dict[str, Any]]:
    from .loader import _resolve as resolve

    return resolve(Path(path).expanduser())


def count_params(path: str | os.PathLike[str]) -> ParamCount:
    """Parameters of the decoder at ``path`` (an .onnx file, an optimum export folder, an
    onnxruntime-genai folder or a greenprof build), from its initializers (see the module docs).
    ``count_params(path).total`` is the number stored with runs of that model."""
    model_file, folder, _fmt, genai = _resolve(path)
    model = _load_graph(model_file)
    return _count(model, model_file.parent, _config(folder), genai)


def params_of(path: str | os.PathLike[str]) -> int | None:
    """``count_params(path).total``, or None when the graph cannot be read (never raises): what
    ``greenprof measure`` stores as the parameter count of a user's export."""
    try:
        return count_params(path).total or None
    except Exception:
        return None


def _config(folder: Path) -> dict[str, Any]:
    """config.json beside the model; for greenprof's builds, the tying their metadata records."""
    config = _read_json(folder / "config.json")
    shape = _read_json(folder / "greenprof-model.json").get("shape")
    if isinstance(shape, dict) and "tied_embeddings" in shape and "tie_word_embeddings" not in config:
        config = {**config, "tie_word_embeddings": bool(shape["tied_embeddings"])}
    return config


def _dim(d: Any) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or None


def _past_inputs(model: Any, genai: dict[str, Any]) -> list[Any]:
    """The graph's past key inputs, layer order (optimum names or genai templates)."""
    inputs = {i.name: i for i in model.graph.input}
    cfg_in = genai.get("model", {}).get("decoder", {}).get("inputs", {}) if genai else {}
    tpl = cfg_in.get("past_key_names")
    out = []
    if tpl:
        i = 0
        while (tpl % i) in inputs:
            out.append(inputs[tpl % i])
            i += 1
        return out
    pat = re.compile(r"^past_key_values\.(\d+)\.key$")
    found = sorted((int(m.group(1)), v) for n, v in inputs.items() if (m := pat.match(n)))
    return [v for _, v in found]


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def _num_heads(model: Any) -> int | None:
    for g in _graphs(model.graph):
        for node in g.node:
            if node.op_type in ("GroupQueryAttention", "MultiHeadAttention", "Attention", "SparseAttention"):
                n = _attr(node, "num_heads")
                if n:
                    return int(n)
    return None


def _file_bytes(model_file: Path, model: Any) -> dict[str, int]:
    """Size of the model file and of every external data file it names."""
    files = {model_file.name: model_file.stat().st_size}
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_location == 1:
                for e in t.external_data:
                    if e.key == "location" and e.value not in files:
                        p = model_file.parent / e.value
                        files[e.value] = p.stat().st_size if p.is_file() else 0
    return files


def inspect_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``greenprof models info PATH`` shows for any decoder export, without loading it:
    ``format`` (``greenprof`` | ``optimum`` | ``genai``), ``name``, ``architecture``, ``layers``,
    ``hidden``, ``heads``, ``kv_heads``, ``head_dim``, ``vocab``, ``kv_dtype``, ``precision``,
    ``params`` (:func:`count_params`), ``params_by_dtype``, ``tied_embeddings``, ``context_length``,
    ``file_bytes`` (model + external data), ``files``, ``tokenizer`` (tokenizer.json beside it),
    ``notes``; ``metadata`` holds greenprof-model.json for greenprof's own builds. A value the
    graph and the config files do not give is None."""
    from .loader import _context_length

    model_file, folder, fmt, genai = _resolve(path)
    model = _load_graph(model_file)
    config = _config(folder)
    meta = _read_json(folder / "greenprof-model.json")
    if "builder_version" not in meta:
        meta = {}
    params = _count(model, model_file.parent, config, genai)
    decoder = genai.get("model", {}).get("decoder", {}) if genai else {}
    shape_meta = meta.get("shape", {}) if meta else {}

    pasts = _past_inputs(model, genai)
    kv_dims = [_dim(d) for d in pasts[0].type.tensor_type.shape.dim] if pasts else []
    kv_dtype = _DTYPES.get(pasts[0].type.tensor_type.elem_type) if pasts else None
    graph_kv_heads = kv_dims[1] if len(kv_dims) == 4 and isinstance(kv_dims[1], int) else None
    graph_head_dim = kv_dims[3] if len(kv_dims) == 4 and isinstance(kv_dims[3], int) else None
    embed = params.embedding_shape
    files = _file_bytes(model_file, model)

    def cfg(*keys: str) -> Any:
        for k in keys:
            v = config.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    hidden = _first(embed[1] if embed else None, shape_meta.get("hidden"), decoder.get("hidden_size"),
                    cfg("hidden_size", "n_embd", "d_model"))
    heads = _first(_num_heads(model), shape_meta.get("heads"), decoder.get("num_attention_heads"),
                   cfg("num_attention_heads", "n_head", "num_heads"))
    kv_heads = _first(graph_kv_heads, decoder.get("num_key_value_heads"),
                      cfg("num_key_value_heads", "num_kv_heads", "n_head_kv"), heads)
    head_dim = _first(graph_head_dim, decoder.get("head_size"), cfg("head_dim"),
                      hidden // heads if hidden and heads else None)
    vocab = _first(_vocab_hint(model, {}, {}), embed[0] if embed else None, genai.get("model", {}).get("vocab_size")
                   if genai else None, cfg("vocab_size"))
    if meta:
        fmt_name, name = "greenprof", meta.get("name")
    else:
        fmt_name = fmt
        name = config.get("_name_or_path") or (folder.name if model_file.parent == folder else model_file.stem)
    architecture = (shape_meta.get("architecture", "llama") if meta else
                    genai.get("model", {}).get("type") if genai else config.get("model_type"))
    return {
        "path": str(folder if model_file.parent == folder and Path(path).expanduser().is_dir() else model_file),
        "model_file": str(model_file),
        "format": fmt_name,
        "name": name,
        "architecture": architecture,
        "layers": len(pasts) or _first(decoder.get("num_hidden_layers"), cfg("num_hidden_layers", "n_layer")),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab": vocab,
        "kv_dtype": kv_dtype,
        "precision": meta.get("precision") if meta else params.precision,
        "params": params.total,
        "params_by_dtype": params.by_dtype,
        "tied_embeddings": params.tied_embeddings,
        "context_length": _context_length(genai, config, meta),
        "file_bytes": sum(files.values()),
        "files": files,
        "tokenizer": (folder / "tokenizer.json").is_file(),
        "notes": params.notes,
        **({"metadata": meta} if meta else {}),
    }
