"""Build the built-in random-weight decoders as ONNX models with a KV cache.

``build("smollm-135m", "int4")`` writes, under the model cache::

    <cache>/smollm-135m-int4-b<BUILDER_VERSION>/
        model.onnx            graph + small tensors (a few hundred KB)
        model.onnx.data       every large weight, external data, 64 KiB-aligned so onnxruntime mmaps it
        tokenizer.json        byte-level tokenizer with exactly ``vocab`` ids (tokenizer.py)
        greenprof-model.json  metadata: shape, precision, hashes, signature (read_metadata)

The graph is a Llama-architecture decoder with the optimum signature (``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/value`` -> ``logits``,
``present.{i}.key/value``; the first step feeds an empty past of length 0), written with
onnxruntime's fused CPU contrib ops (com.microsoft): SkipSimplifiedLayerNormalization (residual
add + RMSNorm), GroupQueryAttention (rotary from cos/sin caches, grouped heads, KV-cache concat,
causal softmax in one kernel), MatMulNBits (int4 / int8 block-wise weights with int8 activations,
``accuracy_level`` 4) and GatherBlockQuantized (quantized embedding). onnxruntime itself fuses the
first RMSNorm and ``x * Sigmoid(x)`` at load. ``attention="plain"`` builds the same model with
the attention in standard ONNX ops (MatMul, Softmax, ...), as a cross-check and to measure what
the fused kernel buys.

A shape with ``architecture="falcon"`` (Falcon-40B) gets Falcon's block instead, named as in HF's
FalconForCausalLM (``transformer.h.{i}.self_attention.query_key_value``, ...): the same rotary
grouped-query attention, but two LayerNorms (weight and bias, opset-17 ``LayerNormalization``) of
the residual stream feed attention and a GELU MLP (``dense_h_to_4h`` -> exact ``Gelu`` ->
``dense_4h_to_h``) *in parallel*, and both outputs join the residual in one add, fused with the
next layer's ``ln_attn`` (SkipLayerNormalization). Its packed ``query_key_value`` is q|k|v as
below, not HF Falcon's per-kv-group interleaving (same parameters and bytes, another order).

The projections that read the same input are packed, as Phi-3 stores them: q|k|v is one
``[hidden, (heads + 2 kv_heads) * head_dim]`` matmul (GroupQueryAttention takes the packed
output as is) and gate|up one ``[hidden, 2 * intermediate]`` matmul followed by a Split. Same
parameters and the same bytes read per token as separate projections, but 4 matmul kernels per
layer instead of 7 (in int8/int4 each a MatMulNBits with the packed N), which decodes faster.

GroupQueryAttention takes its rotary positions from ``attention_mask`` (past length + i) during
the prompt and from ``position_ids`` during single-token steps, so positions must be the usual
``0..total-1`` of an unpadded (or right-padded) batch; the plain variant always uses
``position_ids``.

Weights are random: energy depends on shape and precision, not on values. fp32 weights are
uniform with standard deviation 0.02; int8/int4 weights are drawn directly as uniform random
codes with random per-block scales (about the same standard deviation after dequantization),
which is much faster than drawing floats and quantizing them, and no different for the
hardware. RMSNorm and LayerNorm weights are 1, LayerNorm biases 0. Each tensor has its own numpy
Generator seeded from ``name|precision|tensor``, so the same build gives the same bytes. Tensors
are generated and written one chunk at a time: a 12B model never sits in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from greenprof.errors import GreenprofError, UsageError
from greenprof.models.shapes import ModelShape, get_shape, param_count

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ATTENTIONS",
    "BUILDER_VERSION",
    "DATA_FILE",
    "METADATA_FILE",
    "MODEL_FILE",
    "PRECISIONS",
    "TOKENIZER_FILE",
    "ProgressCallback",
    "build",
    "cache_root",
    "check_attention",
    "check_precision",
    "file_hash",
    "is_built",
    "model_dir",
    "planned_bytes",
    "read_metadata",
    "machine_memory_bytes",
    "memory_needed_bytes",
    "check_memory",
]

# Bump when the graph, the weight generation or the file layout changes: it is part of the cache
# folder name, so old builds are never mistaken for new ones.
BUILDER_VERSION = 2  # 2: gate_proj + up_proj packed into one gate_up_proj matmul

PRECISIONS = ("fp32", "int8", "int4")
ATTENTIONS = ("gqa", "plain")
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "greenprof-model.json"

OPSET = 21  # default ONNX domain; com.microsoft is version 1
IR_VERSION = 10
QUANT_BLOCK_SIZE = 32  # weights per scale along the input dimension
ACCURACY_LEVEL = 4  # MatMulNBits: quantize activations to int8 and use integer dot products
WEIGHT_STD = 0.02
MAX_CONTEXT = 32768  # rows of the rotary cos/sin caches (caps NeMo's 1M-position config)

_INLINE_MAX = 1024  # tensors up to this many bytes live inside model.onnx
_ALIGN_FROM = 1 << 20  # tensors from this size start on an _ALIGN boundary (mmap-able)
_ALIGN = 1 << 16
_CHUNK_BYTES = 1 << 24  # weights are generated and written 16 MiB at a time

ProgressCallback = Callable[[int, int], None]
Pathish = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Cache locations and metadata


def cache_root(cache_dir: Pathish | None = None) -> Path:
    """Folder holding built models.

    ``cache_dir``, else ``$GREENPROF_CACHE``, else ``$XDG_CACHE_HOME/greenprof/models``
    (``~/.cache/greenprof/models`` when XDG_CACHE_HOME is unset).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GREENPROF_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "greenprof" / "models"


def check_precision(precision: str) -> str:
    """The canonical spelling of ``precision``; UsageError listing the choices when unknown."""
    p = precision.strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return p


def check_attention(attention: str) -> str:
    """The canonical spelling of an attention variant; UsageError listing the choices when unknown."""
    a = attention.strip().lower()
    if a not in ATTENTIONS:
        raise UsageError(f"unknown attention variant {attention!r}; choose one of: {', '.join(ATTENTIONS)}")
    return a


def _resolve(name: str | ModelShape) -> ModelShape:
    return name if isinstance(name, ModelShape) else get_shape(name)


def model_dir(
    name: str | ModelShape, precision: str = "fp32", cache_dir: Pathish | None = None, *, attention: str = "gqa"
) -> Path:
    """Where ``build`` puts (or has put) this model; it may not exist yet."""
    shape = _resolve(name)
    precision = check_precision(precision)
    suffix = "" if check_attention(attention) == "gqa" else f"-{attention}"
    return cache_root(cache_dir) / f"{shape.name}-{precision}-b{BUILDER_VERSION}{suffix}"


def file_hash(path: Pathish, algorithm: str = "sha256", chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (works for multi-GB weight files)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def read_metadata(path: Pathish) -> dict[str, Any]:
    """The ``greenprof-model.json`` of a built model, without loading the model.

    ``path`` may be the model folder, a file in it (``model.onnx``) or the metadata file itself.
    Raises UsageError when there is none (not a model built by greenprof) or it is unreadable.
    """
    p = Path(path).expanduser()
    meta_path = p if p.name == METADATA_FILE else (p / METADATA_FILE if p.is_dir() else p.parent / METADATA_FILE)
    if not meta_path.is_file():
        if not p.exists():
            raise UsageError(f"{p} does not exist")
        raise UsageError(f"no {METADATA_FILE} beside {p}: not a model built by `greenprof models build`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {meta_path}: {exc}") from exc
    if not isinstance(meta, dict) or "builder_version" not in meta:
        raise UsageError(f"{meta_path} is not greenprof model metadata")
    return meta


def _is_complete(folder: Path, shape: ModelShape, precision: str, attention: str) -> bool:
    """True when ``folder`` holds a finished build of exactly this model (cheap: no hashing)."""
    try:
        meta = read_metadata(folder)
    except UsageError:
        return False
    if (
        meta.get("builder_version") != BUILDER_VERSION
        or meta.get("precision") != precision
        or meta.get("attention") != attention
        or meta.get("shape") != shape.to_dict()
    ):
        return False
    files = meta.get("files", {})
    if set(files) != {MODEL_FILE, DATA_FILE, TOKENIZER_FILE}:
        return False
    for fname, info in files.items():
        f = folder / fname
        if not f.is_file() or f.stat().st_size != info.get("bytes"):
            return False
    return True


def is_built(
    name: str | ModelShape, precision: str = "fp32", cache_dir: Pathish | None = None, *, attention: str = "gqa"
) -> bool:
    """Whether ``build`` would be a no-op."""
    shape = _resolve(name)
    precision = check_precision(precision)
    attention = check_attention(attention)
    return _is_complete(model_dir(shape, precision, cache_dir, attention=attention), shape, precision, attention)


# --------------------------------------------------------------------------------------------
# Weights: planned first (name, dtype, shape, how to fill), generated while writing


@dataclass
class _Init:
    """One initializer of the graph, described but not yet generated."""

    name: str
    dtype: str  # numpy dtype name: "float32", "uint8", "int64"
    shape: tuple[int, ...]
    fill: str  # "uniform" | "ones" | "zeros" | "codes" (uniform random bytes) | "scales" | "const"
    scale: float = 0.0  # std for "uniform", mean scale for "scales"
    value: Any = None  # numpy array for "const"
    alias: str | None = None  # reuse the bytes of this initializer (tied weights, another layout)

    @property
    def nbytes(self) -> int:
        import numpy as np

        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _seed(model: str, precision: str, tensor: str) -> int:
    digest = hashlib.sha256(f"{model}|{precision}|{tensor}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _generate(init: _Init, seed: int) -> Iterator[bytes]:
    """The tensor's bytes in C order, a chunk at a time (deterministic for a given seed)."""
    import numpy as np

    if init.fill == "const":
        yield np.ascontiguousarray(init.value, dtype=init.dtype).tobytes()
        return
    itemsize = np.dtype(init.dtype).itemsize
    total = init.nbytes // itemsize
    per_chunk = max(1, _CHUNK_BYTES // itemsize)
    rng = np.random.default_rng(seed)
    for start in range(0, total, per_chunk):
        n = min(per_chunk, total - start)
        if init.fill == "uniform":
            # Uniform on [-sqrt(3) std, +sqrt(3) std]: standard deviation ``scale``, and about
            # 10x faster to draw than numpy's normal (which would dominate fp32 build time).
            a = rng.random(n, dtype=np.float32)
            a -= np.float32(0.5)
            a *= np.float32(2.0 * math.sqrt(3.0) * init.scale)
            yield a.tobytes()
        elif init.fill == "codes":
            yield rng.bytes(n)
        elif init.fill == "scales":
            # Mean ``scale``, spread 0.5x..1.5x, so blocks differ as in a real quantized model.
            a = rng.random(n, dtype=np.float32)
            a += np.float32(0.5)
            a *= np.float32(init.scale)
            yield a.tobytes()
        elif init.fill == "ones":
            yield np.ones(n, dtype=init.dtype).tobytes()
        elif init.fill == "zeros":
            yield np.zeros(n, dtype=init.dtype).tobytes()
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown fill {init.fill!r}")


# --------------------------------------------------------------------------------------------
# The graph


@dataclass
class _Graph:
    """Collects nodes and planned initializers; ``_decoder_graph`` drives it."""

    shape: ModelShape
    precision: str
    attention: str
    nodes: list = field(default_factory=list)
    inits: list[_Init] = field(default_factory=list)
    inputs: list = field(default_factory=list)  # onnx ValueInfoProto
    outputs: list = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    # -- plumbing --------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "",
             outputs: list[str] | None = None, **attrs: Any) -> list[str]:
        """Add a node called ``name``; its outputs are ``outputs`` or ``name/out{i}``."""
        from onnx import helper

        assert name not in self._names, name
        self._names.add(name)
        outputs = outputs or [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs

    def op(self, op: str, inputs: list[str], name: str, domain: str = "", output: str | None = None,
           **attrs: Any) -> str:
        return self.node(op, inputs, name, 1, domain, [output] if output else None, **attrs)[0]

    def const(self, name: str, value: Any, dtype: str | None = None) -> str:
        import numpy as np

        arr = np.asarray(value, dtype=dtype)
        self.inits.append(_Init(name, arr.dtype.name, tuple(arr.shape), "const", value=arr))
        return name

    def weight(self, name: str, dtype: str, shape: tuple[int, ...], fill: str, scale: float = 0.0,
               alias: str | None = None) -> str:
        self.inits.append(_Init(name, dtype, tuple(int(d) for d in shape), fill, scale, alias=alias))
        return name

    # -- layers ----------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return {"int4": 4, "int8": 8}[self.precision]

    def _code_std(self) -> float:
        """Standard deviation of a uniform random code minus the default zero point (2^(bits-1))."""
        levels = 1 << self.bits
        return math.sqrt((levels * levels - 1) / 12.0)

    def quantized_weight(self, prefix: str, n: int, k: int, alias: str | None = None) -> tuple[str, str]:
        """Codes ``[n, k/block, block*bits/8]`` and scales ``[n * k/block]`` (MatMulNBits layout).

        No zero points: MatMulNBits and GatherBlockQuantized then use the symmetric default
        2^(bits-1). With ``alias`` the bytes are those of ``alias``'s GatherBlockQuantized
        tensors (tied embeddings): same bytes, another shape, no second copy on disk.
        """
        bs = QUANT_BLOCK_SIZE
        blocks = k // bs
        codes = self.weight(f"{prefix}.qweight", "uint8", (n, blocks, bs * self.bits // 8), "codes",
                            alias=f"{alias}.qweight" if alias else None)
        scales = self.weight(f"{prefix}.scales", "float32", (n * blocks,), "scales", WEIGHT_STD / self._code_std(),
                             alias=f"{alias}.scales" if alias else None)
        return codes, scales

    def linear(self, x: str, prefix: str, k: int, n: int, alias: str | None = None, output: str | None = None) -> str:
        """``x @ W`` with ``W`` of shape ``[k, n]`` in this precision."""
        if self.precision == "fp32":
            w = self.weight(f"{prefix}.weight", "float32", (k, n), "uniform", WEIGHT_STD)
            return self.op("MatMul", [x, w], f"{prefix}/MatMul", output=output)
        codes, scales = self.quantized_weight(prefix, n, k, alias)
        return self.op("MatMulNBits", [x, codes, scales], f"{prefix}/MatMulNBits", domain="com.microsoft",
                       output=output, K=k, N=n, bits=self.bits, block_size=QUANT_BLOCK_SIZE,
                       accuracy_level=ACCURACY_LEVEL)

    def rms_norm(self, x: str, prefix: str) -> str:
        """RMSNorm in standard ops (only the first layer's input norm is not fused with a residual).

        onnxruntime fuses this exact pattern into SimplifiedLayerNormalization at load time;
        writing the standard ops keeps the graph valid for ``onnx.checker`` (the fused op is
        onnxruntime-only but registered in the default domain, which the checker rejects).
        """
        gamma = self.weight(f"{prefix}.weight", "float32", (self.shape.hidden,), "ones")
        sq = self.op("Pow", [x, self.const(f"{prefix}.two", 2.0, "float32")], f"{prefix}/Pow")
        mean = self.op("ReduceMean", [sq, self.const(f"{prefix}.axes", [-1], "int64")], f"{prefix}/ReduceMean")
        var = self.op("Add", [mean, self.const(f"{prefix}.eps", self.shape.rms_eps, "float32")], f"{prefix}/AddEps")
        normed = self.op("Div", [x, self.op("Sqrt", [var], f"{prefix}/Sqrt")], f"{prefix}/Div")
        return self.op("Mul", [normed, gamma], f"{prefix}/MulGamma")

    def layer_norm(self, x: str, prefix: str) -> str:
        """LayerNorm with weight and bias over the last axis (ONNX LayerNormalization, opset 17+)."""
        gamma = self.weight(f"{prefix}.weight", "float32", (self.shape.hidden,), "ones")
        beta = self.weight(f"{prefix}.bias", "float32", (self.shape.hidden,), "zeros")
        return self.op("LayerNormalization", [x, gamma, beta], f"{prefix}/LayerNorm", axis=-1,
                       epsilon=self.shape.rms_eps)

    def skip_layer_norm(self, x: str, residual: str, prefix: str) -> tuple[str, str]:
        """LayerNorm(x + residual) and x + residual, in one kernel (weight and bias)."""
        gamma = self.weight(f"{prefix}.weight", "float32", (self.shape.hidden,), "ones")
        beta = self.weight(f"{prefix}.bias", "float32", (self.shape.hidden,), "zeros")
        name = f"{prefix}/SkipLayerNorm"
        out = self.node("SkipLayerNormalization", [x, residual, gamma, beta], name, domain="com.microsoft",
                        outputs=[f"{name}/out0", "", "", f"{name}/out3"], epsilon=self.shape.rms_eps)
        return out[0], out[3]

    def skip_rms_norm(self, x: str, residual: str, prefix: str) -> tuple[str, str]:
        """RMSNorm(x + residual) and x + residual, in one kernel."""
        gamma = self.weight(f"{prefix}.weight", "float32", (self.shape.hidden,), "ones")
        name = f"{prefix}/SkipSimplifiedLayerNorm"
        # Outputs 1 and 2 (mean, inv_std_var) are left unnamed so they are never computed.
        out = self.node("SkipSimplifiedLayerNormalization", [x, residual, gamma], name, domain="com.microsoft",
                        outputs=[f"{name}/out0", "", "", f"{name}/out3"], epsilon=self.shape.rms_eps)
        return out[0], out[3]


def _rotary_caches(shape: ModelShape) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables ``[context, head_dim/2]`` for non-interleaved (rotate_half) rotary."""
    import numpy as np

    d = shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    t = np.arange(min(shape.max_position, MAX_CONTEXT), dtype=np.float64)
    freqs = np.outer(t, inv_freq)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _gqa_attention(g: _Graph, i: int, qkv: str, ctx: dict[str, str]) -> tuple[str, str, str]:
    s = g.shape
    out = g.node(
        "GroupQueryAttention",
        [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", ctx["seqlens_k"],
         ctx["total_len"], ctx["cos"], ctx["sin"], "position_ids"],
        f"model.layers.{i}.attn/GroupQueryAttention", domain="com.microsoft",
        outputs=[f"model.layers.{i}.attn/GroupQueryAttention/out0", f"present.{i}.key", f"present.{i}.value"],
        num_heads=s.heads, kv_num_heads=s.kv_heads, do_rotary=1, rotary_interleaved=0,
        scale=1.0 / math.sqrt(s.head_dim), local_window_size=-1,
    )
    return out[0], out[1], out[2]


def _plain_context(g: _Graph) -> dict[str, str]:
    """Per-graph tensors of the plain-ops attention: rotary cos/sin rows and the mask bias."""
    import numpy as np
    from onnx import TensorProto

    cos, sin = _rotary_caches(g.shape)
    ctx: dict[str, str] = {}
    axis1 = g.const("rotary.axis1", [1], "int64")
    for nm, table in (("cos", cos), ("sin", sin)):
        # Tables widened to head_dim ([c, c]) to match the rotate_half layout.
        full = g.const(f"rotary.{nm}_full", np.concatenate([table, table], axis=1))
        rows = g.op("Gather", [full, "position_ids"], f"rotary/{nm}_gather", axis=0)  # [b, s, d]
        ctx[nm] = g.op("Unsqueeze", [rows, axis1], f"rotary/{nm}_unsqueeze")  # [b, 1, s, d]
    # Additive mask [b, 1, 1, s, T] (the 5-D layout of the grouped scores): 0 where key j may
    # be seen by query i (j <= past + i and attention_mask[b, j] == 1), float32 min elsewhere.
    total = g.op("Shape", ["attention_mask"], "mask/total_len", start=1, end=2)  # [1]
    seq = g.op("Shape", ["input_ids"], "mask/seq_len", start=1, end=2)
    past = g.op("Sub", [total, seq], "mask/past_len")
    zero = g.const("mask.zero", 0, "int64")
    one = g.const("mask.one", 1, "int64")
    t_scalar = g.op("Squeeze", [total], "mask/total_scalar")
    p_scalar = g.op("Squeeze", [past], "mask/past_scalar")
    kpos = g.op("Range", [zero, t_scalar, one], "mask/kpos")  # [T]
    qpos = g.op("Range", [p_scalar, t_scalar, one], "mask/qpos")  # [s]
    qcol = g.op("Unsqueeze", [qpos, g.const("mask.axis_last", [1], "int64")], "mask/qcol")  # [s, 1]
    causal = g.op("LessOrEqual", [kpos, qcol], "mask/causal")  # [s, T]
    keep = g.op("Cast", ["attention_mask"], "mask/keep", to=TensorProto.BOOL)  # [b, T]
    keep5 = g.op("Unsqueeze", [keep, g.const("mask.axes123", [1, 2, 3], "int64")], "mask/keep5")
    allowed = g.op("And", [causal, keep5], "mask/allowed")  # [b, 1, 1, s, T]
    ctx["bias"] = g.op("Where", [allowed, g.const("mask.zero_f", 0.0, "float32"),
                                 g.const("mask.min_f", np.finfo(np.float32).min, "float32")], "mask/bias")
    return ctx


def _rotate(g: _Graph, x: str, ctx: dict[str, str], half: int, name: str) -> str:
    """x * cos + rotate_half(x) * sin for x ``[b, heads, s, d]``."""
    x1, x2 = g.node("Split", [x, g.const(f"{name}.halves", [half, half], "int64")], f"{name}/split", n_out=2, axis=-1)
    rot = g.op("Concat", [g.op("Neg", [x2], f"{name}/neg"), x1], f"{name}/concat", axis=-1)
    a = g.op("Mul", [x, ctx["cos"]], f"{name}/mul_cos")
    b = g.op("Mul", [rot, ctx["sin"]], f"{name}/mul_sin")
    return g.op("Add", [a, b], f"{name}/add")


def _plain_attention(g: _Graph, i: int, qkv: str, ctx: dict[str, str]) -> tuple[str, str, str]:
    s = g.shape
    d, h, kv = s.head_dim, s.heads, s.kv_heads
    groups = h // kv
    p = f"model.layers.{i}.attn"
    q, k, v = g.node("Split", [qkv, g.const(f"{p}.qkv_sizes", [h * d, kv * d, kv * d], "int64")], f"{p}/split_qkv",
                     n_out=3, axis=-1)
    perm = [0, 2, 1, 3]

    def heads(x: str, n: int, nm: str) -> str:  # [b, s, n*d] -> [b, n, s, d]
        r = g.op("Reshape", [x, g.const(f"{p}.{nm}_shape", [0, 0, n, d], "int64")], f"{p}/{nm}_reshape")
        return g.op("Transpose", [r], f"{p}/{nm}_transpose", perm=perm)

    q = _rotate(g, heads(q, h, "q"), ctx, d // 2, f"{p}/q_rot")
    k = _rotate(g, heads(k, kv, "k"), ctx, d // 2, f"{p}/k_rot")
    v = heads(v, kv, "v")
    present_k = g.op("Concat", [f"past_key_values.{i}.key", k], f"{p}/present_key", output=f"present.{i}.key",
                     axis=2)  # [b, kv, T, d]
    present_v = g.op("Concat", [f"past_key_values.{i}.value", v], f"{p}/present_value",
                     output=f"present.{i}.value", axis=2)
    # Grouped-query attention without copying K/V per query head: view the query heads as
    # [b, kv, groups, s, d] and let MatMul broadcast K/V [b, kv, 1, T, d] over the groups.
    q = g.op("Mul", [q, g.const(f"{p}.scale", 1.0 / math.sqrt(d), "float32")], f"{p}/q_scale")
    q5 = g.op("Reshape", [q, g.const(f"{p}.q5_shape", [0, kv, groups, -1, d], "int64")], f"{p}/q5")
    axis2 = g.const(f"{p}.axis2", [2], "int64")
    k5 = g.op("Unsqueeze", [present_k, axis2], f"{p}/k5")
    v5 = g.op("Unsqueeze", [present_v, axis2], f"{p}/v5")
    kt = g.op("Transpose", [k5], f"{p}/k5_t", perm=[0, 1, 2, 4, 3])
    scores = g.op("MatMul", [q5, kt], f"{p}/scores")  # [b, kv, groups, s, T]
    scores = g.op("Add", [scores, ctx["bias"]], f"{p}/masked")
    probs = g.op("Softmax", [scores], f"{p}/softmax", axis=-1)
    o5 = g.op("MatMul", [probs, v5], f"{p}/context")  # [b, kv, groups, s, d]
    o = g.op("Reshape", [o5, g.const(f"{p}.o4_shape", [0, h, -1, d], "int64")], f"{p}/o4")
    o = g.op("Transpose", [o], f"{p}/o_transpose", perm=perm)
    o = g.op("Reshape", [o, g.const(f"{p}.o_shape", [0, 0, h * d], "int64")], f"{p}/o_merge")
    return o, present_k, present_v


def _decoder_graph(shape: ModelShape, precision: str, attention: str) -> _Graph:
    """Nodes, planned initializers, inputs and outputs of the whole decoder."""
    from onnx import TensorProto, helper

    g = _Graph(shape, precision, attention)
    s = shape
    for dim in (s.hidden, s.heads * s.head_dim, s.intermediate):
        if precision != "fp32" and dim % QUANT_BLOCK_SIZE:
            raise UsageError(f"shape {s.name!r}: input size {dim} is not a multiple of the quantization block "
                             f"{QUANT_BLOCK_SIZE}; build it in fp32")

    # Inputs and outputs (optimum names; symbolic dims named as optimum does).
    b, seq, past, total = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, seq]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [b, total]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [b, seq]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [b, seq, s.vocab])]
    for i in range(s.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                                                        [b, s.kv_heads, past, s.head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         [b, s.kv_heads, total, s.head_dim]))
    g.inputs, g.outputs = inputs, outputs

    # Token embedding.
    falcon = s.architecture == "falcon"
    embed = "transformer.word_embeddings" if falcon else "model.embed_tokens"
    if precision == "fp32":
        table = g.weight(f"{embed}.weight", "float32", (s.vocab, s.hidden), "uniform", WEIGHT_STD)
        x = g.op("Gather", [table, "input_ids"], f"{embed}/Gather", axis=0)
    else:
        blocks = s.hidden // QUANT_BLOCK_SIZE
        codes = g.weight(f"{embed}.qweight", "uint8", (s.vocab, s.hidden * g.bits // 8), "codes")
        scales = g.weight(f"{embed}.scales", "float32", (s.vocab, blocks), "scales", WEIGHT_STD / g._code_std())
        x = g.op("GatherBlockQuantized", [codes, "input_ids", scales], f"{embed}/GatherBlockQuantized",
                 domain="com.microsoft", bits=g.bits, block_size=QUANT_BLOCK_SIZE, gather_axis=0, quantize_axis=1)

    # Per-graph attention context.
    if attention == "gqa":
        cos, sin = _rotary_caches(s)
        # GroupQueryAttention wants seqlens_k = (valid tokens - 1) per row and the total length,
        # both int32, derived here from the attention mask.
        mask_sum = g.op("ReduceSum", ["attention_mask", g.const("gqa.axis1", [1], "int64")], "gqa/mask_sum",
                        keepdims=0)
        seqlens = g.op("Sub", [mask_sum, g.const("gqa.one", 1, "int64")], "gqa/seqlens_k_64")
        mask_shape = g.op("Shape", ["attention_mask"], "gqa/mask_shape")
        total_len = g.op("Gather", [mask_shape, g.const("gqa.idx1", 1, "int64")], "gqa/total_len_64", axis=0)
        ctx = {
            "seqlens_k": g.op("Cast", [seqlens], "gqa/seqlens_k", to=TensorProto.INT32),
            "total_len": g.op("Cast", [total_len], "gqa/total_len", to=TensorProto.INT32),
            "cos": g.const("rotary.cos_cache", cos),
            "sin": g.const("rotary.sin_cache", sin),
        }
        attend = _gqa_attention
    else:
        ctx = _plain_context(g)
        attend = _plain_attention

    qkv_out = (s.heads + 2 * s.kv_heads) * s.head_dim
    if falcon:
        h = _falcon_layers(g, x, ctx, attend, qkv_out)
        _lm_head(g, h, embed)
        return g
    mlp_halves = g.const("mlp.gate_up_sizes", [s.intermediate, s.intermediate], "int64")
    residual = x
    h = g.rms_norm(x, "model.layers.0.input_layernorm")
    for i in range(s.layers):
        p = f"model.layers.{i}"
        # Attention: one packed q|k|v projection (GroupQueryAttention accepts it as is).
        qkv = g.linear(h, f"{p}.attn.qkv_proj", s.hidden, qkv_out)
        attn, _, _ = attend(g, i, qkv, ctx)  # also writes present.{i}.key / .value
        attn = g.linear(attn, f"{p}.attn.o_proj", s.heads * s.head_dim, s.hidden)
        h, residual = g.skip_rms_norm(attn, residual, f"{p}.post_attention_layernorm")
        # SiLU-gated MLP. gate_proj and up_proj are one packed [hidden, 2 * intermediate]
        # projection (gate columns first, then up; one weight read, one matmul kernel instead of
        # two per layer), split afterwards; onnxruntime fuses x * Sigmoid(x) into one kernel.
        gate_up = g.linear(h, f"{p}.mlp.gate_up_proj", s.hidden, 2 * s.intermediate)
        gate, up = g.node("Split", [gate_up, mlp_halves], f"{p}.mlp/split_gate_up", n_out=2, axis=-1)
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}.mlp/Sigmoid")], f"{p}.mlp/SiLU")
        mlp = g.linear(g.op("Mul", [silu, up], f"{p}.mlp/GateMul"), f"{p}.mlp.down_proj", s.intermediate, s.hidden)
        nxt = f"model.layers.{i + 1}.input_layernorm" if i + 1 < s.layers else "model.norm"
        h, residual = g.skip_rms_norm(mlp, residual, nxt)

    _lm_head(g, h, embed)
    return g


def _falcon_layers(g: _Graph, x: str, ctx: dict[str, str], attend: Callable, qkv_out: int) -> str:
    """Falcon's parallel blocks ("new decoder architecture"); returns ``ln_f`` of the last residual.

    Per layer: ``ln_attn(x)`` -> attention, ``ln_mlp(x)`` -> GELU MLP, ``x + attn + mlp``. The add
    of layer i's branches to the residual is fused with layer i+1's ``ln_attn`` (or ``ln_f``) in
    one SkipLayerNormalization, whose sum output is the residual ``ln_mlp`` also reads.
    """
    s = g.shape
    residual = x
    h_attn = g.layer_norm(x, "transformer.h.0.ln_attn")
    for i in range(s.layers):
        p = f"transformer.h.{i}"
        h_mlp = g.layer_norm(residual, f"{p}.ln_mlp")
        qkv = g.linear(h_attn, f"{p}.self_attention.query_key_value", s.hidden, qkv_out)
        attn, _, _ = attend(g, i, qkv, ctx)  # also writes present.{i}.key / .value
        attn = g.linear(attn, f"{p}.self_attention.dense", s.heads * s.head_dim, s.hidden)
        up = g.linear(h_mlp, f"{p}.mlp.dense_h_to_4h", s.hidden, s.intermediate)
        act = g.op("Gelu", [up], f"{p}.mlp/Gelu", approximate="none")  # HF "gelu": exact (erf)
        mlp = g.linear(act, f"{p}.mlp.dense_4h_to_h", s.intermediate, s.hidden)
        branches = g.op("Add", [attn, mlp], f"{p}/attn_plus_mlp")
        nxt = f"transformer.h.{i + 1}.ln_attn" if i + 1 < s.layers else "transformer.ln_f"
        h_attn, residual = g.skip_layer_norm(branches, residual, nxt)
    return h_attn


def _lm_head(g: _Graph, h: str, embed: str) -> None:
    """``logits`` from the final normed hidden state: a separate head, or the embedding (tied)."""
    s, precision = g.shape, g.precision
    if not s.tied_embeddings:
        g.linear(h, "lm_head", s.hidden, s.vocab, output="logits")
    elif precision == "fp32":
        # Tied: the head is the embedding transposed; onnxruntime folds the Transpose at load.
        wt = g.op("Transpose", [f"{embed}.weight"], "lm_head/Transpose", perm=[1, 0])
        g.op("MatMul", [h, wt], "lm_head/MatMul", output="logits")
    else:
        # Tied and quantized: the embedding's GatherBlockQuantized bytes are exactly the
        # MatMulNBits layout of the head, reshaped; both tensors point at the same bytes.
        g.linear(h, "lm_head", s.hidden, s.vocab, alias=embed, output="logits")


# --------------------------------------------------------------------------------------------
# Writing


def _plan_bytes(inits: list[_Init]) -> int:
    return sum(t.nbytes for t in inits if t.alias is None)


@lru_cache(maxsize=64)
def _planned_bytes(shape: ModelShape, precision: str, attention: str) -> int:
    return _plan_bytes(_decoder_graph(shape, precision, attention).inits)


def planned_bytes(name: str | ModelShape, precision: str = "fp32", *, attention: str = "gqa") -> int:
    """Bytes of tensors ``build`` writes for this model (its size on disk, give or take alignment)."""
    return _planned_bytes(_resolve(name), check_precision(precision), check_attention(attention))


# Resident memory of a loaded model per byte of weights on disk, measured with psutil (RSS after
# ``load`` minus RSS before, 2 threads, onnxruntime 1.32) on SmolLM-135M and -360M: fp32 1.00
# (+46 MiB), int8 1.20 (+39 MiB), int4 1.47 (+20 MiB). onnxruntime keeps a prepacked copy of
# MatMulNBits weights beside the mapped originals; fp32 weights are used in place.
_RESIDENT_PER_WEIGHT_BYTE = {"fp32": 1.0, "int8": 1.25, "int4": 1.5}
_RUNTIME_BYTES = 256 << 20  # onnxruntime itself, activations and logits of a prompt: headroom
_MEMORY_CONTEXT = 2048  # tokens of KV cache (batch 1) counted in the need


def memory_needed_bytes(name: str | ModelShape, precision: str = "fp32", *, attention: str = "gqa",
                        batch: int = 1, tokens: int | None = None) -> int:
    """Memory this model needs to run here: its weights as onnxruntime holds them once loaded
    (``_RESIDENT_PER_WEIGHT_BYTE`` x the bytes on disk), a float32 KV cache per sequence of
    ``tokens`` (default: up to 2048), float32 logits per sequence, and 256 MiB for the runtime
    and activations."""
    shape = _resolve(name)
    precision = check_precision(precision)
    weights = planned_bytes(shape, precision, attention=attention)
    context = tokens if tokens is not None else min(shape.max_position, MAX_CONTEXT, _MEMORY_CONTEXT)
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * 4 * context * batch
    logits = 4 * shape.vocab * batch if batch > 1 else 0  # batch 1's are in the runtime allowance
    return int(weights * _RESIDENT_PER_WEIGHT_BYTE[precision]) + kv + logits + _RUNTIME_BYTES


def machine_memory_bytes() -> int:
    """Physical memory of this machine, or the cgroup's limit when a container sets a lower one."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def check_memory(name: str | ModelShape, precision: str = "fp32", *, attention: str = "gqa",
                 batch: int = 1, tokens: int | None = None) -> None:
    """GreenprofError (one line) when this machine has less memory than the model needs to run
    (with ``batch`` sequences of ``tokens`` each, when given)."""
    shape = _resolve(name)
    precision = check_precision(precision)
    need = memory_needed_bytes(shape, precision, attention=attention, batch=batch, tokens=tokens)
    have = machine_memory_bytes()
    if need <= have:
        return
    if batch > 1 and memory_needed_bytes(shape, precision, attention=attention, tokens=tokens) <= have:
        per_seq = 2 * shape.layers * shape.kv_heads * shape.head_dim * 4 * (tokens or 1) + 4 * shape.vocab
        fits = max(1, (have - memory_needed_bytes(shape, precision, attention=attention, tokens=0)) // per_seq)
        raise GreenprofError(f"{shape.name} {precision} with --batch {batch} needs {need / 2**30:.1f} GiB of memory "
                             f"(its KV cache and logits for {batch} sequences) and this machine has "
                             f"{have / 2**30:.1f} GiB: use --batch {min(fits, batch - 1)} or fewer")
    fits = [p for p in PRECISIONS if memory_needed_bytes(shape, p, attention=attention) <= have]
    ladder = "`greenprof ladder` extrapolates its figures from the model sizes measured here"
    if fits:
        smaller = memory_needed_bytes(shape, fits[0], attention=attention)
        hint = f"use --precision {fits[0]} (needs {smaller / 2**30:.1f} GiB), or {ladder}"
    else:
        hint = f"no precision of it fits; {ladder}"
    raise GreenprofError(f"{shape.name} {precision} needs {need / 2**30:.1f} GiB of memory to run and this "
                         f"machine has {have / 2**30:.1f} GiB: {hint}")


def _write(g: _Graph, folder: Path, progress: ProgressCallback | None) -> tuple[str, int, str, int]:
    """Generate and write every tensor, then the graph. Returns (model sha, size, data sha, size)."""
    import numpy as np
    from onnx import TensorProto, helper

    total = _plan_bytes(g.inits)
    done = 0
    data_hash = hashlib.sha256()
    placed: dict[str, tuple[int, int] | bytes] = {}  # name -> (offset, length) or inline raw bytes
    protos = []
    if progress:
        progress(0, total)
    with open(folder / DATA_FILE, "wb") as data:
        offset = 0
        for t in g.inits:
            proto = TensorProto()
            proto.name = t.name
            proto.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
            proto.dims.extend(t.shape)
            if t.alias is not None:
                where = placed[t.alias]
                assert (len(where) if isinstance(where, bytes) else where[1]) == t.nbytes, t.name
            elif t.nbytes <= _INLINE_MAX:
                where = b"".join(_generate(t, _seed(g.shape.name, g.precision, t.name)))
                done += len(where)
            else:
                if t.nbytes >= _ALIGN_FROM and offset % _ALIGN:
                    pad = _ALIGN - offset % _ALIGN
                    data.write(b"\0" * pad)
                    data_hash.update(b"\0" * pad)
                    offset += pad
                start = offset
                for chunk in _generate(t, _seed(g.shape.name, g.precision, t.name)):
                    data.write(chunk)
                    data_hash.update(chunk)
                    offset += len(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                assert offset - start == t.nbytes, t.name
                where = (start, t.nbytes)
            placed[t.name] = where
            if isinstance(where, bytes):
                proto.raw_data = where
            else:
                proto.data_location = TensorProto.EXTERNAL
                for key, value in (("location", DATA_FILE), ("offset", str(where[0])), ("length", str(where[1]))):
                    entry = proto.external_data.add()
                    entry.key, entry.value = key, value
            protos.append(proto)
        data.flush()
        os.fsync(data.fileno())
        data_size = offset
    if progress:
        progress(total, total)

    model = _model_proto(g, protos)
    blob = model.SerializeToString()
    with open(folder / MODEL_FILE, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(blob).hexdigest(), len(blob), data_hash.hexdigest(), data_size


def _model_proto(g: _Graph, protos: list) -> Any:
    from onnx import helper

    graph = helper.make_graph(g.nodes, f"greenprof-{g.shape.name}-{g.precision}", g.inputs, g.outputs,
                              initializer=protos)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="greenprof",
        producer_version=str(BUILDER_VERSION),
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, {"greenprof.model": g.shape.name, "greenprof.precision": g.precision,
                                   "greenprof.builder_version": str(BUILDER_VERSION)})
    return model


def _signature(inputs: list, outputs: list) -> dict[str, list[dict[str, Any]]]:
    from onnx import helper

    def describe(vi: Any) -> dict[str, Any]:
        tt = vi.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        return {"name": vi.name, "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims}

    return {"inputs": [describe(v) for v in inputs], "outputs": [describe(v) for v in outputs]}


# --------------------------------------------------------------------------------------------
# Public entry point


def _remove_stale_temps(root: Path, final_name: str) -> None:
    """Delete temp folders left by builds of this model that were killed (their pid is gone)."""
    from greenprof.hostinfo import pid_alive

    for tmp in root.glob(f".tmp-{final_name}-*"):
        try:
            pid = int(tmp.name[len(f".tmp-{final_name}-"):].split("-")[0])
        except ValueError:
            continue
        if not pid_alive(pid):  # this process counts as alive
            shutil.rmtree(tmp, ignore_errors=True)


def build(
    name: str | ModelShape,
    precision: str = "fp32",
    cache_dir: Pathish | None = None,
    progress: ProgressCallback | None = None,
    *,
    attention: str = "gqa",
    memory_check: bool = True,
) -> Path:
    """Build (or find in the cache) the random-weight model ``name`` in ``precision``; return its folder.

    ``name`` is a registered shape name (``greenprof.models.shapes.SHAPES``) or a ModelShape.
    ``progress(done_bytes, total_bytes)`` is called while weights are written. A build that is
    already complete returns at once; an interrupted build never leaves a folder that looks
    complete (everything is written in a temp folder that is renamed at the end).

    A model that needs more memory to run than this machine has (:func:`memory_needed_bytes`,
    e.g. Falcon-40B on a laptop) is refused with a GreenprofError before anything is written,
    also when it is already built; ``memory_check=False`` builds it anyway (to copy elsewhere).
    """
    shape = _resolve(name)
    precision = check_precision(precision)
    attention = check_attention(attention)
    if memory_check:
        check_memory(shape, precision, attention=attention)
    final = model_dir(shape, precision, cache_dir, attention=attention)
    if _is_complete(final, shape, precision, attention):
        return final

    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(root, exc) from exc
    _remove_stale_temps(root, final.name)
    started = time.perf_counter()
    g = _decoder_graph(shape, precision, attention)
    need = _plan_bytes(g.inits) + (64 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        raise GreenprofError(f"not enough disk space in {root} for {shape.name} {precision}: need "
                             f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free (point GREENPROF_CACHE elsewhere)")

    tmp = root / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise _cache_error(root, exc) from exc
    try:
        model_sha, model_size, data_sha, data_size = _write(g, tmp, progress)
        from greenprof.models.tokenizer import EOS_TOKEN_ID, build_tokenizer

        build_tokenizer(shape.vocab).save(str(tmp / TOKENIZER_FILE))
        tok_size = (tmp / TOKENIZER_FILE).stat().st_size
        meta = _metadata(shape, precision, attention, g, started,
                         files={MODEL_FILE: (model_sha, model_size), DATA_FILE: (data_sha, data_size),
                                TOKENIZER_FILE: (file_hash(tmp / TOKENIZER_FILE), tok_size)},
                         eos_token_id=EOS_TOKEN_ID)
        meta_tmp = tmp / METADATA_FILE
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            if _is_complete(final, shape, precision, attention):  # a concurrent build won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            shutil.rmtree(final)  # a broken build or one from an older builder
        try:
            os.rename(tmp, final)  # atomic: the folder appears complete or not at all
        except OSError:
            # Another process renamed the same build in between: use theirs.
            if _is_complete(final, shape, precision, attention):
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except OSError as exc:  # disk full, permissions changed under us, ...
        shutil.rmtree(tmp, ignore_errors=True)
        raise _cache_error(root, exc) from exc
    except BaseException:  # including KeyboardInterrupt: never leave a half-written model
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _cache_error(root: Path, exc: OSError) -> GreenprofError:
    return GreenprofError(f"cannot write the model into {root}: {exc.strerror or exc}; "
                          "point GREENPROF_CACHE (or --cache-dir) at a writable folder with free space")


def _metadata(shape: ModelShape, precision: str, attention: str, g: _Graph, started: float,
              files: dict[str, tuple[str, int]], eos_token_id: int) -> dict[str, Any]:
    import datetime as dt

    model_sha = files[MODEL_FILE][0]
    data_sha = files[DATA_FILE][0]
    return {
        "format": "greenprof-model",
        "name": shape.name,
        "hf_id": shape.hf_id,
        "shape": shape.to_dict(),
        "param_count": param_count(shape),
        "precision": precision,
        "attention": attention,
        "builder_version": BUILDER_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "build_duration_s": round(time.perf_counter() - started, 3),
        "opset": {"": OPSET, "com.microsoft": 1},
        "ir_version": IR_VERSION,
        "signature": _signature(g.inputs, g.outputs),
        "kv_dtype": "float32",
        "context_length": min(shape.max_position, MAX_CONTEXT),
        "eos_token_id": eos_token_id,
        "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        # One hash for the whole model: sha256 of "<model.onnx sha>\n<data sha>\n".
        "model_sha256": hashlib.sha256(f"{model_sha}\n{data_sha}\n".encode()).hexdigest(),
        "files": {fname: {"sha256": sha, "bytes": size} for fname, (sha, size) in files.items()},
        "weights": {
            "init": "random uniform with std 0.02 in fp32; uniform random codes with random per-block scales "
                    "(same std after dequantization) in int8/int4; RMSNorm and LayerNorm weights 1, "
                    "LayerNorm biases 0",
            "seed": "numpy default_rng(sha256('name|precision|tensor')[:8])",
        },
        "quantization": None if precision == "fp32" else {
            "method": "MatMulNBits (linear layers), GatherBlockQuantized (embedding)",
            "bits": g.bits,
            "block_size": QUANT_BLOCK_SIZE,
            "symmetric": True,
            "accuracy_level": ACCURACY_LEVEL,
        },
    }
