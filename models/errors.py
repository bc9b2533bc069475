"""Errors raised by the model loader and runner.

All are :class:`greenprof.errors.UsageError` subclasses (exit code 2): each one means the user
pointed greenprof at something it cannot run, and its message is one line that says what is
wrong and what greenprof expects instead.
"""

from __future__ import annotations

from greenprof.errors import UsageError


class ModelError(UsageError):
    """Base of every model loading / generation error."""


class ModelNotFound(ModelError):
    """The model path does not exist, or a folder holds no ONNX model greenprof recognizes."""


class NotOnnxModel(ModelError):
    """The file is not an ONNX model at all (text, another format)."""


class CorruptModel(ModelError):
    """The file looks like ONNX but cannot be parsed (truncated download, damaged file)."""


class NotADecoderModel(ModelError):
    """A valid ONNX model that is not a decoder LM (no ``input_ids`` -> ``logits``)."""


class NoKVCache(ModelError):
    """A decoder LM exported without past key/value inputs."""


class UnsupportedModel(ModelError):
    """A decoder LM whose signature greenprof cannot drive (unknown extra inputs, static KV)."""


class TokenizerMissing(ModelError):
    """A text prompt was given but the model has no tokenizer.json."""


class ProviderUnavailable(ModelError):
    """The requested onnxruntime execution provider is not available in this install."""


class InvalidArgument(ModelError):
    """A bad argument to ``load`` or ``generate`` (option value, prompt, lengths, batch, sampling)."""


class AttributionError(ModelError):
    """A measurement cannot be attributed to tokens (missing or mismatched segments)."""
