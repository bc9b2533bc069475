"""Load a decoder LM exported to ONNX and describe how to drive it.

Two layouts are recognized:

* **optimum** exports: an ``.onnx`` file, or a folder holding ``decoder_model_merged.onnx`` /
  ``model.onnx`` / ``decoder_with_past_model.onnx`` (``tokenizer.json``, ``config.json`` optional
  beside it). Inputs ``input_ids``, ``attention_mask``, optional ``position_ids`` and
  ``use_cache_branch``, ``past_key_values.{i}.key/value``; outputs ``logits``,
  ``present.{i}.key/value``.
* **onnxruntime-genai** folders: ``genai_config.json`` names the model file and the input/output
  names, the KV names as ``%d`` templates (``past_key_values.%d.key``). No ``position_ids``.

Everything is bound by name, never by position. The KV dtype, KV heads and head size come from
the session's input metadata; batch support from whether the batch dimension is symbolic.
``onnxruntime`` is imported lazily inside :func:`load` so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import (
    CorruptModel,
    InvalidArgument,
    ModelNotFound,
    NoKVCache,
    NotADecoderModel,
    NotOnnxModel,
    ProviderUnavailable,
    UnsupportedModel,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime
    import tokenizers

__all__ = ["LoadedModel", "ModelCheck", "Signature", "check", "load", "GRAPH_OPT_LEVELS"]

ModelFormat = Literal["optimum", "genai"]

#: Folder file names tried, in order, for an optimum export (merged decoder first).
OPTIMUM_FILES = ("decoder_model_merged.onnx", "model.onnx", "decoder_with_past_model.onnx")

#: ``graph_opt`` values -> onnxruntime.GraphOptimizationLevel member names.
GRAPH_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",  # onnxruntime >= 1.22
    "all": "ORT_ENABLE_ALL",
}

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}

_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(bool)": np.dtype(np.bool_),
}

_EXPECTED = (
    "greenprof expects a decoder LM with inputs input_ids, attention_mask, "
    "past_key_values.N.key/value and outputs logits, present.N.key/value "
    "(an optimum or onnxruntime-genai export)"
)
_REEXPORT = (
    "re-export with `optimum-cli export onnx --task text-generation-with-past "
    "--model <model> <output-dir>`"
)


@dataclass(frozen=True)
class Signature:
    """Names and dtypes of the tensors the runner feeds and reads, bound by name."""

    input_ids: str
    attention_mask: str | None
    position_ids: str | None
    #: optimum merged decoders select the with-past subgraph with this bool input.
    use_cache_branch: str | None
    past_keys: tuple[str, ...]
    past_values: tuple[str, ...]
    logits: str
    present_keys: tuple[str, ...]
    present_values: tuple[str, ...]
    ids_dtype: np.dtype
    mask_dtype: np.dtype
    position_dtype: np.dtype
    kv_dtype: np.dtype
    logits_dtype: np.dtype
    num_layers: int
    num_kv_heads: int
    head_dim: int
    #: None when the batch dimension is symbolic (any batch works), else the fixed batch size.
    fixed_batch: int | None
    vocab_size: int | None

    @property
    def supports_batch(self) -> bool:
        return self.fixed_batch is None or self.fixed_batch > 1

    @property
    def output_names(self) -> list[str]:
        """logits, then present key/value of each layer (the order the runner reads them)."""
        names = [self.logits]
        for k, v in zip(self.present_keys, self.present_values):
            names += [k, v]
        return names


@dataclass
class LoadedModel:
    """An onnxruntime session plus everything needed to generate with it."""

    path: Path  # the .onnx file
    folder: Path
    format: ModelFormat
    session: "onnxruntime.InferenceSession"
    signature: Signature
    provider: str  # the execution provider actually first in the session
    device: Literal["cpu", "cuda"]
    device_id: int
    threads: int | None
    graph_opt: str
    spinning: bool
    tokenizer: "tokenizers.Tokenizer | None" = None
    eos_token_ids: tuple[int, ...] = ()
    context_length: int | None = None
    #: contents of greenprof-model.json when the folder has one (built-in models), else {}.
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int | None:
        if self.signature.vocab_size is not None:
            return self.signature.vocab_size
        return self.tokenizer.get_vocab_size() if self.tokenizer is not None else None

    def describe(self) -> dict[str, Any]:
        """Plain facts about the model and session, for run records."""
        sig = self.signature
        return {
            "path": str(self.path),
            "format": self.format,
            "provider": self.provider,
            "threads": self.threads,
            "graph_opt": self.graph_opt,
            "spinning": self.spinning,
            "kv_dtype": str(sig.kv_dtype),
            "num_layers": sig.num_layers,
            "num_kv_heads": sig.num_kv_heads,
            "head_dim": sig.head_dim,
            "vocab_size": self.vocab_size,
            "supports_batch": sig.supports_batch,
            "has_tokenizer": self.tokenizer is not None,
        }


def load(
    path: str | os.PathLike[str],
    *,
    providers: str | Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    threads: int | None = None,
    graph_opt: str = "all",
    spinning: bool = False,
    profile_prefix: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Open an ONNX decoder LM for generation.

    ``path``: an ``.onnx`` file, an optimum export folder or an onnxruntime-genai folder.
    ``providers``: ``None``/``"cpu"``, ``"cuda"`` / ``"cuda:1"``, a full provider name, or a list
    of those (or ``(name, options)`` pairs); CPU is always appended as the fallback.
    ``threads``: intra-op threads (None = onnxruntime's default, one per physical core).
    ``graph_opt``: one of :data:`GRAPH_OPT_LEVELS`. ``spinning=False`` (the default, and what
    energy measurements want) stops idle worker threads from busy-waiting between ops.
    ``profile_prefix``: turn on onnxruntime's profiler (per-node kernel times, JSON; it slows every
    node a little); ``model.session.end_profiling()`` writes the file and returns its path.
    """
    import onnxruntime as ort

    model_file, folder, fmt, genai = _resolve(Path(path).expanduser())
    provider_list = _providers(ort, providers)
    options = _session_options(ort, threads, graph_opt, spinning)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    try:
        session = ort.InferenceSession(str(model_file), sess_options=options, providers=provider_list)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise _load_failure(model_file, exc) from exc

    wanted = provider_list[0][0]
    active = session.get_providers()
    if wanted not in active:
        raise ProviderUnavailable(
            f"onnxruntime could not start {wanted} for {model_file.name} and fell back to "
            f"{active[0]}: check that the CUDA/cuDNN libraries onnxruntime-gpu needs are installed"
        )

    hf_config = _read_optional_json(folder / "config.json")
    decoder_cfg = genai.get("model", {}).get("decoder", {}) if genai else {}
    signature = _signature(session, model_file, decoder_cfg, hf_config)

    tokenizer = _load_tokenizer(folder / "tokenizer.json")
    metadata = _read_optional_json(folder / "greenprof-model.json")
    return LoadedModel(
        path=model_file,
        folder=folder,
        format=fmt,
        session=session,
        signature=signature,
        provider=active[0],
        device="cuda" if active[0] == "CUDAExecutionProvider" else "cpu",
        device_id=int(provider_list[0][1].get("device_id", 0)),
        threads=threads,
        graph_opt=graph_opt,
        spinning=spinning,
        tokenizer=tokenizer,
        eos_token_ids=_eos_ids(genai, folder, hf_config, metadata, tokenizer),
        context_length=_context_length(genai, hf_config, metadata),
        metadata=metadata,
    )


@dataclass
class ModelCheck:
    """What :func:`check` learnt about a user model without starting onnxruntime."""

    path: Path  # the .onnx file
    folder: Path
    format: ModelFormat
    signature: Signature
    context_length: int | None
    has_tokenizer: bool
    #: contents of greenprof-model.json when the folder has one (built-in models), else {}.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: config.json (an optimum export's Hugging Face config), else {}.
    hf_config: dict[str, Any] = field(default_factory=dict)


class _ValueInfo:
    """An ``onnx`` graph input/output seen the way onnxruntime's ``NodeArg`` shows it."""

    __slots__ = ("name", "type", "shape")

    def __init__(self, name: str, type_: str, shape: list[Any]) -> None:
        self.name, self.type, self.shape = name, type_, shape


class _GraphView:
    """Enough of an ``InferenceSession`` (``get_inputs``/``get_outputs``) for :func:`_signature`."""

    def __init__(self, inputs: list[_ValueInfo], outputs: list[_ValueInfo]) -> None:
        self._inputs, self._outputs = inputs, outputs

    def get_inputs(self) -> list[_ValueInfo]:
        return self._inputs

    def get_outputs(self) -> list[_ValueInfo]:
        return self._outputs


def _value_infos(values: Any, skip: set[str]) -> list[_ValueInfo]:
    from onnx import TensorProto

    names = {v: k.lower() for k, v in TensorProto.DataType.items()}
    out = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        dims: list[Any] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        elem = names.get(t.elem_type, str(t.elem_type))
        out.append(_ValueInfo(v.name, f"tensor({elem})", dims))
    return out


def check(path: str | os.PathLike[str]) -> ModelCheck:
    """Check a user model the way :func:`load` would, without starting onnxruntime or reading
    external weights: the folder layout, that the file is an intact ONNX model, and its inputs
    and outputs (the same rules as :func:`load`). Cheap enough to run on every model of a
    command before the first one is measured."""
    model_file, folder, fmt, genai = _resolve(Path(path).expanduser())
    size = model_file.stat().st_size
    if size == 0:
        raise CorruptModel(f"{model_file} is empty (0 bytes): re-download or re-export the model")
    with model_file.open("rb") as fh:
        head = fh.read(64)
    if head[:1] != b"\x08":  # a serialized ModelProto starts with field 1 (ir_version, varint)
        what = "text" if _looks_like_text(head) else "unknown binary data"
        raise NotOnnxModel(f"{model_file} is not an ONNX model (it holds {what}): {_EXPECTED}")
    import onnx

    try:
        proto = onnx.load_model(str(model_file), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends
        raise CorruptModel(
            f"{model_file} is a truncated or damaged ONNX file ({size} bytes, protobuf parsing "
            "failed): re-download or re-export the model"
        ) from None
    graph = proto.graph
    if not graph.node:  # bytes that happen to parse as an empty ModelProto
        raise CorruptModel(
            f"{model_file} is a truncated or damaged ONNX file ({size} bytes, no graph in it): "
            "re-download or re-export the model"
        )
    initializers = {i.name for i in graph.initializer}
    view = _GraphView(_value_infos(graph.input, initializers), _value_infos(graph.output, set()))
    hf_config = _read_optional_json(folder / "config.json")
    decoder_cfg = genai.get("model", {}).get("decoder", {}) if genai else {}
    signature = _signature(view, model_file, decoder_cfg, hf_config)
    metadata = _read_optional_json(folder / "greenprof-model.json")
    return ModelCheck(
        path=model_file,
        folder=folder,
        format=fmt,
        signature=signature,
        context_length=_context_length(genai, hf_config, metadata),
        has_tokenizer=(folder / "tokenizer.json").is_file(),
        metadata=metadata,
        hf_config=hf_config,
    )


# --------------------------------------------------------------------------- format detection


def _resolve(path: Path) -> tuple[Path, Path, ModelFormat, dict[str, Any]]:
    """(model file, folder, format, genai config or {}) for a user-given path."""
    if not path.exists():
        raise ModelNotFound(
            f"model path {path} does not exist: greenprof expects an .onnx file, an optimum export "
            "folder (model.onnx or decoder_model_merged.onnx) or an onnxruntime-genai folder "
            "(genai_config.json)"
        )
    if path.is_file() and path.name == "genai_config.json":
        path = path.parent
    if path.is_file():
        # An .onnx file named by a genai_config.json beside it is a genai model.
        genai = _read_genai_config(path.parent) if (path.parent / "genai_config.json").is_file() else {}
        if genai and genai["model"]["decoder"].get("filename") == path.name:
            return path, path.parent, "genai", genai
        return path, path.parent, "optimum", {}

    if (path / "genai_config.json").is_file():
        genai = _read_genai_config(path)
        model_file = path / genai["model"]["decoder"]["filename"]
        if not model_file.is_file():
            raise ModelNotFound(
                f"{path / 'genai_config.json'} names model file {model_file.name} but {model_file} "
                "does not exist: copy the whole onnxruntime-genai model folder"
            )
        return model_file, path, "genai", genai
    for name in OPTIMUM_FILES:
        if (path / name).is_file():
            return path / name, path, "optimum", {}
    candidates = sorted(path.glob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0], path, "optimum", {}
    if not candidates:
        raise ModelNotFound(
            f"folder {path} holds no ONNX model: greenprof expects model.onnx or "
            "decoder_model_merged.onnx (optimum export) or genai_config.json (onnxruntime-genai)"
        )
    names = ", ".join(c.name for c in candidates[:6])
    raise ModelNotFound(
        f"folder {path} holds several ONNX files ({names}) and none is named "
        f"{' / '.join(OPTIMUM_FILES)}: pass the decoder's .onnx file itself"
    )


def _read_genai_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "genai_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModel(f"{cfg_path} is not valid JSON ({exc}): re-create it with the onnxruntime-genai model builder") from exc
    decoder = cfg.get("model", {}).get("decoder") if isinstance(cfg, dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("filename"), str):
        raise UnsupportedModel(
            f"{cfg_path} has no model.decoder.filename: greenprof expects an onnxruntime-genai "
            "decoder-only model config"
        )
    return cfg


def _read_optional_json(path: Path) -> dict[str, Any]:
    """A side file (config.json, greenprof-model.json): {} when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _load_failure(model_file: Path, exc: Exception) -> Exception:
    """Turn onnxruntime's load error into one actionable greenprof error."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    size = model_file.stat().st_size
    if size == 0:
        return CorruptModel(f"{model_file} is empty (0 bytes): re-download or re-export the model")
    with model_file.open("rb") as fh:
        head = fh.read(64)
    # A serialized ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    if head[:1] != b"\x08":
        what = "text" if _looks_like_text(head) else "unknown binary data"
        return NotOnnxModel(
            f"{model_file} is not an ONNX model (it holds {what}): {_EXPECTED}"
        )
    if "protobuf" in message.lower():
        return CorruptModel(
            f"{model_file} is a truncated or damaged ONNX file ({size} bytes, protobuf parsing "
            "failed): re-download or re-export the model"
        )
    if "external" in message.lower():
        return CorruptModel(
            f"the external weights of {model_file} are missing or truncated ({message}): keep the "
            ".onnx.data file beside the .onnx file, complete"
        )
    return UnsupportedModel(f"onnxruntime cannot load {model_file}: {message}")


def _looks_like_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


# --------------------------------------------------------------------------- session options


def _providers(
    ort: Any, providers: str | Sequence[str | tuple[str, dict[str, Any]]] | None
) -> list[tuple[str, dict[str, Any]]]:
    """Normalized (name, options) list, CPU last; raises when a provider is not installed."""
    if providers is None:
        requested: list[Any] = ["cpu"]
    elif isinstance(providers, str):
        requested = [providers]
    else:
        requested = list(providers)
    available = ort.get_available_providers()
    result: list[tuple[str, dict[str, Any]]] = []
    for item in requested:
        options: dict[str, Any] = {}
        if isinstance(item, tuple):
            item, options = item[0], dict(item[1])
        if not isinstance(item, str) or not item:
            raise InvalidArgument(f"provider {item!r} is not a provider name: use 'cpu', 'cuda' or an onnxruntime provider name")
        name, _, device = item.partition(":")
        name = _PROVIDER_ALIASES.get(name.lower(), name)
        if device:
            if not device.isdigit():
                raise InvalidArgument(f"provider {item!r}: the device after ':' must be a number, e.g. 'cuda:0'")
            options.setdefault("device_id", int(device))
        if name not in available:
            hint = (
                ": install onnxruntime-gpu instead of onnxruntime (pip uninstall onnxruntime; "
                "pip install onnxruntime-gpu) on a machine with an NVIDIA GPU"
                if name == "CUDAExecutionProvider"
                else ": install the onnxruntime build that ships it"
            )
            raise ProviderUnavailable(
                f"execution provider {name} is not available in this onnxruntime "
                f"(available: {', '.join(available)}){hint}"
            )
        result.append((name, options))
    if all(name != "CPUExecutionProvider" for name, _ in result):
        result.append(("CPUExecutionProvider", {}))
    return result


def _session_options(ort: Any, threads: int | None, graph_opt: str, spinning: bool) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-node warnings on stderr
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise InvalidArgument(f"threads={threads!r}: give a positive number of intra-op threads, or None for onnxruntime's default")
        options.intra_op_num_threads = threads
    level_name = GRAPH_OPT_LEVELS.get(graph_opt)
    level = getattr(ort.GraphOptimizationLevel, level_name, None) if level_name else None
    if level is None:
        choices = ", ".join(k for k, v in GRAPH_OPT_LEVELS.items() if hasattr(ort.GraphOptimizationLevel, v))
        raise InvalidArgument(f"graph_opt={graph_opt!r} is not a graph optimization level: use one of {choices}")
    options.graph_optimization_level = level
    if not spinning:
        # Worker threads otherwise busy-wait between ops, burning power that is not inference.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


# --------------------------------------------------------------------------- signature


_OPTIMUM_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_OPTIMUM_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")


def _signature(
    session: Any, model_file: Path, decoder_cfg: Mapping[str, Any], hf_config: Mapping[str, Any]
) -> Signature:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    cfg_in: Mapping[str, Any] = decoder_cfg.get("inputs", {}) if decoder_cfg else {}
    cfg_out: Mapping[str, Any] = decoder_cfg.get("outputs", {}) if decoder_cfg else {}
    if decoder_cfg and ("past_names" in cfg_in or "past_key_names" not in cfg_in and any(
        re.fullmatch(r"past_\d+", n) for n in inputs
    )):
        raise UnsupportedModel(
            f"{model_file.name} uses a combined past_N KV tensor (GPT-2 style genai export): "
            "greenprof needs separate key and value tensors; rebuild with a current model builder"
        )

    ids_name = cfg_in.get("input_ids", "input_ids")
    logits_name = cfg_out.get("logits", "logits")
    if ids_name not in inputs or logits_name not in outputs:
        raise NotADecoderModel(
            f"{model_file} is not a decoder LM (inputs: {_names(inputs)}; outputs: "
            f"{_names(outputs)}): {_EXPECTED}"
        )
    mask_name = cfg_in.get("attention_mask", "attention_mask")
    pos_name = cfg_in.get("position_ids", "position_ids")

    if decoder_cfg:
        past_k, past_v = _from_templates(
            inputs,
            cfg_in.get("past_key_names", "past_key_values.%d.key"),
            cfg_in.get("past_value_names", "past_key_values.%d.value"),
        )
        pres_k, pres_v = _from_templates(
            outputs,
            cfg_out.get("present_key_names", "present.%d.key"),
            cfg_out.get("present_value_names", "present.%d.value"),
        )
    else:
        past_k, past_v = _from_pattern(inputs, _OPTIMUM_PAST)
        pres_k, pres_v = _from_pattern(outputs, _OPTIMUM_PRESENT)

    if not past_k and not past_v:
        raise NoKVCache(
            f"{model_file} is a decoder LM exported without KV cache (no past_key_values.* "
            f"inputs): {_REEXPORT}"
        )
    if len(past_k) != len(past_v) or len(pres_k) != len(past_k) or len(pres_v) != len(past_v):
        raise UnsupportedModel(
            f"{model_file} has {len(past_k)} past keys, {len(past_v)} past values, "
            f"{len(pres_k)} present keys and {len(pres_v)} present values: greenprof expects one "
            f"of each per layer; {_REEXPORT}"
        )

    use_cache = "use_cache_branch" if "use_cache_branch" in inputs else None
    known = {ids_name, mask_name, pos_name, *past_k, *past_v, *([use_cache] if use_cache else [])}
    unknown = [n for n in inputs if n not in known]
    if unknown:
        raise UnsupportedModel(
            f"{model_file} has input(s) greenprof does not know how to feed ({', '.join(unknown[:6])}): "
            "greenprof feeds input_ids, attention_mask, position_ids, past_key_values.N.key/value "
            "and use_cache_branch"
        )

    first_past = inputs[past_k[0]]
    shape = list(first_past.shape)
    if len(shape) != 4:
        raise UnsupportedModel(
            f"{model_file}: past input {first_past.name} has shape {shape}; greenprof expects "
            "(batch, kv_heads, sequence, head_dim)"
        )
    if isinstance(shape[2], int):
        raise UnsupportedModel(
            f"{model_file}: past input {first_past.name} has a fixed sequence length {shape[2]} "
            "(static KV cache); greenprof expects a symbolic past length (optimum or "
            "onnxruntime-genai CPU/CUDA export)"
        )
    kv_dtype = _dtype(first_past.type, first_past.name, model_file, ("tensor(float)", "tensor(float16)"))
    num_kv_heads = shape[1] if isinstance(shape[1], int) else _config_kv_heads(decoder_cfg, hf_config)
    head_dim = shape[3] if isinstance(shape[3], int) else _config_head_dim(decoder_cfg, hf_config)
    if num_kv_heads is None or head_dim is None:
        raise UnsupportedModel(
            f"{model_file}: the KV heads / head size of {first_past.name} are symbolic "
            f"({shape}) and no config.json or genai_config.json gives them"
        )

    batch_dim = inputs[ids_name].shape[0] if inputs[ids_name].shape else None
    logits_shape = outputs[logits_name].shape or []
    vocab = logits_shape[-1] if logits_shape and isinstance(logits_shape[-1], int) else None
    int_types = ("tensor(int64)", "tensor(int32)")
    return Signature(
        input_ids=ids_name,
        attention_mask=mask_name if mask_name in inputs else None,
        position_ids=pos_name if pos_name in inputs else None,
        use_cache_branch=use_cache,
        past_keys=tuple(past_k),
        past_values=tuple(past_v),
        logits=logits_name,
        present_keys=tuple(pres_k),
        present_values=tuple(pres_v),
        ids_dtype=_dtype(inputs[ids_name].type, ids_name, model_file, int_types),
        mask_dtype=_dtype(inputs[mask_name].type, mask_name, model_file, int_types)
        if mask_name in inputs
        else np.dtype(np.int64),
        position_dtype=_dtype(inputs[pos_name].type, pos_name, model_file, int_types)
        if pos_name in inputs
        else np.dtype(np.int64),
        kv_dtype=kv_dtype,
        logits_dtype=_dtype(outputs[logits_name].type, logits_name, model_file, ("tensor(float)", "tensor(float16)")),
        num_layers=len(past_k),
        num_kv_heads=int(num_kv_heads),
        head_dim=int(head_dim),
        fixed_batch=batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None,
        vocab_size=vocab,
    )


def _from_pattern(nodes: Mapping[str, Any], pattern: re.Pattern[str]) -> tuple[list[str], list[str]]:
    """Key and value names ordered by layer index, for optimum-style names."""
    keys: dict[int, str] = {}
    values: dict[int, str] = {}
    for name in nodes:
        m = pattern.match(name)
        if m:
            (keys if m.group(2) == "key" else values)[int(m.group(1))] = name
    return [keys[i] for i in sorted(keys)], [values[i] for i in sorted(values)]


def _from_templates(nodes: Mapping[str, Any], key_tpl: str, value_tpl: str) -> tuple[list[str], list[str]]:
    """Key and value names from genai ``%d`` templates, layer 0 upwards until one is missing."""
    keys: list[str] = []
    values: list[str] = []
    i = 0
    while (key_tpl % i) in nodes or (value_tpl % i) in nodes:
        if (key_tpl % i) in nodes:
            keys.append(key_tpl % i)
        if (value_tpl % i) in nodes:
            values.append(value_tpl % i)
        i += 1
    return keys, values


def _dtype(ort_type: str, name: str, model_file: Path, allowed: tuple[str, ...]) -> np.dtype:
    if ort_type not in allowed:
        pretty = ", ".join(a[len("tensor("):-1] for a in allowed)
        raise UnsupportedModel(
            f"{model_file}: input/output {name} has type {ort_type}; greenprof supports {pretty} here"
        )
    return _ORT_DTYPES[ort_type]


def _names(nodes: Mapping[str, Any], limit: int = 6) -> str:
    names = list(nodes)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def _config_kv_heads(decoder_cfg: Mapping[str, Any], hf: Mapping[str, Any]) -> int | None:
    value = decoder_cfg.get("num_key_value_heads") or hf.get("num_key_value_heads") or hf.get("num_attention_heads")
    return int(value) if value else None


def _config_head_dim(decoder_cfg: Mapping[str, Any], hf: Mapping[str, Any]) -> int | None:
    if decoder_cfg.get("head_size"):
        return int(decoder_cfg["head_size"])
    if hf.get("head_dim"):
        return int(hf["head_dim"])
    if hf.get("hidden_size") and hf.get("num_attention_heads"):
        return int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    return None


# --------------------------------------------------------------------------- tokenizer, EOS


def _load_tokenizer(path: Path) -> "tokenizers.Tokenizer | None":
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise UnsupportedModel(f"{path} is not a tokenizers tokenizer.json ({exc}): copy the model's own tokenizer.json") from exc


_EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|end|>")


def _eos_ids(
    genai: Mapping[str, Any],
    folder: Path,
    hf_config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    tokenizer: "tokenizers.Tokenizer | None",
) -> tuple[int, ...]:
    """EOS ids from the first source that has them: genai config, generation_config.json,
    config.json, greenprof-model.json, then well-known EOS tokens of the tokenizer."""
    generation = _read_optional_json(folder / "generation_config.json")
    for source in (genai.get("model", {}), generation, hf_config, metadata):
        value = source.get("eos_token_id")
        if isinstance(value, int):
            return (value,)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return tuple(value)
    if tokenizer is not None:
        ids = [tokenizer.token_to_id(t) for t in _EOS_TOKENS]
        return tuple(i for i in ids if i is not None)
    return ()


def _context_length(genai: Mapping[str, Any], hf: Mapping[str, Any], metadata: Mapping[str, Any]) -> int | None:
    for value in (
        genai.get("model", {}).get("context_length"),
        hf.get("max_position_embeddings"),
        metadata.get("context_length"),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return None
