"""Token-by-token generation with a KV cache, marked for energy attribution.

One prompt pass ("prefill") runs over the whole prompt with an empty past (length 0); then one
decode pass per generated token feeds that token and the previous step's ``present.*`` tensors
back as ``past_key_values.*``. Each generated token goes through the model exactly once, so the
segments line up with tokens:

    (setup: tokenizing, buffers)                              meter.mark("setup")
    prefill pass: prompt tokens -> logits -> token 1          meter.mark("prefill")
    decode pass i: token i      -> logits -> token i+1        meter.mark(f"token-{i}")

A meter's segment is labelled by the mark that closes it, so the "setup" mark keeps whatever ran
in the meter's block before generation (loading the model, tokenizing) out of "prefill".

(The logits of the last decode pass are not sampled.) Generation is fixed-length by default
(EOS ignored) so runs compare fairly; ``stop_at_eos=True`` stops once every row has fed an EOS.

Two ways of driving onnxruntime are implemented, both bound by name:

* ``io_binding=True``: an ``IOBinding`` whose ``present.*`` outputs are allocated by
  onnxruntime on the execution device and re-bound, as OrtValues, as the next step's
  ``past_key_values.*``: the KV cache never goes through numpy and never leaves the device.
* ``io_binding=False``: plain ``session.run`` with numpy feeds.

Without a shared KV buffer (below), the default (``io_binding=None``) is IO binding on a GPU
provider, where it keeps the KV cache in device memory instead of copying it to the host and
back every token, and plain ``session.run`` on CPU: there ``run`` is already zero-copy (numpy
inputs are wrapped in place and outputs are numpy views of onnxruntime's buffers), and the extra
per-step binding calls made IO binding slower per decode step on tiny models and no faster on
SmolLM-135M shapes (measured when this default was chosen).

**Shared KV buffer** (``shared_kv``). Both ways above grow the cache by one position a step:
every decode pass writes a new ``present`` one token longer than the ``past`` it was given, so
the whole KV cache is copied (and the new tensor allocated and zeroed) once per token. For models
whose past/present tensors go straight into and out of com.microsoft ``GroupQueryAttention``
nodes (greenprof's built-in models and onnxruntime-genai's CPU exports; checked on the ONNX
graph, see :func:`shared_kv_blocker`)
the runner instead does what the onnxruntime-genai runtime does: one ``(batch, kv_heads,
prompt + new_tokens, head_dim)`` OrtValue per past/present pair, allocated once and bound through
IOBinding as *both* ``past_key_values.i.*`` and ``present.i.*``. GroupQueryAttention sees the
aliased buffers (``past_present_share_buffer``) and writes only the new token's K/V in place, at
position ``seqlens_k``. The attention mask keeps its usual meaning and width (``past + new``
ones): the graph derives ``seqlens_k = sum(mask) - 1`` (valid tokens minus one per row) and
``total_sequence_length = mask.shape[1]`` from it, so the kernel reads exactly the valid prefix
of the max-length buffer and the prompt pass is still a first prompt (``sequence_length ==
total_sequence_length``); a max-length mask would instead make the prompt look like a chunked
continuation (refused for batch > 1). Results are the same as the growing cache (the kernel
computes over the same ``total`` positions: bit-identical logits in the tests), and a decode
step no longer copies the cache nor re-binds it (``benchmarks/runner_speed.py`` measures what
that buys; its dated results are under ``benchmarks/results/``). ``shared_kv=None`` (the
default) uses it on the CPU for every model whose graph allows it, built-in or an
onnxruntime-genai export, whatever ``io_binding=None`` would otherwise pick there (not with an
explicit ``io_binding=False``); ``True`` forces it (also on CUDA, where it is untested; there the
GroupQueryAttention kernel exists for fp16/bf16 KV only); ``False`` never uses it.

Turning the marks into per-token figures is greenprof.accounting's job (``attribute``); this module
generates tokens and marks the meter, nothing else.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import InvalidArgument, TokenizerMissing

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .loader import LoadedModel

__all__ = [
    "Generation",
    "MarkSink",
    "generate",
    "shared_kv_blocker",
]


class MarkSink(Protocol):
    """What :func:`generate` needs from a meter: ``greenprof.Meter`` satisfies it. A meter may
    also offer ``token_marker()``, returning the callable to use for the ``token-N`` marks
    (taken after the ``prefill`` mark)."""

    def mark(self, label: str) -> Any: ...


@dataclass
class Generation:
    """The result of one :func:`generate` call."""

    token_ids: np.ndarray  # (batch, new_tokens) generated ids, int64
    prompt_ids: np.ndarray  # (batch, prompt_tokens) int64
    text: str | None  # decoded generated text of row 0, when the model has a tokenizer
    prompt_tokens: int  # per row
    new_tokens: int  # per row (decode passes run)
    batch: int
    prefill_duration_s: float
    token_durations_s: list[float]
    measurement: Any | None = None  # meter.measurement when the meter had exited, else None
    io_binding: bool = False
    texts: list[str] | None = None  # decoded text of every row
    shared_kv: bool = False  # one max-length past/present buffer per layer (see the module docs)

    @property
    def decode_duration_s(self) -> float:
        return float(sum(self.token_durations_s))

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second over the decode passes, all rows counted."""
        d = self.decode_duration_s
        return self.new_tokens * self.batch / d if d > 0 else math.nan

    @property
    def prefill_tokens_per_s(self) -> float:
        d = self.prefill_duration_s
        return self.prompt_tokens * self.batch / d if d > 0 else math.nan


# --------------------------------------------------------------------------- generation


def generate(
    model: LoadedModel,
    *,
    prompt: str | None = None,
    prompt_tokens: int | None = None,
    new_tokens: int = 64,
    batch: int = 1,
    greedy: bool = True,
    seed: int = 0,
    temperature: float = 1.0,
    stop_at_eos: bool = False,
    meter: MarkSink | None = None,
    io_binding: bool | None = None,
    shared_kv: bool | None = None,
    on_token: Callable[[int, np.ndarray], Any] | None = None,
) -> Generation:
    """Generate ``new_tokens`` tokens per row after a prompt.

    The prompt is either ``prompt`` (text, through the model's tokenizer; every row gets it) or
    ``prompt_tokens`` random token ids per row (seeded, no EOS among them). ``greedy`` takes the
    argmax of the last position's logits; otherwise tokens are sampled at ``temperature`` from a
    generator seeded with ``seed`` (reproducible). ``meter.mark`` is called just before the
    prompt pass ("setup"), after it ("prefill") and after every decode pass ("token-1",
    "token-2", ...), each time after the device has finished the work. ``io_binding``: None picks the faster way for the model's device (IO
    binding on GPU, ``session.run`` on CPU); True/False force one (see the module docs).
    ``shared_kv``: None uses one preallocated past/present buffer per layer, bound through IO
    binding, where it applies (a GroupQueryAttention graph on the CPU, built-in or an
    onnxruntime-genai export, ``io_binding`` not False); True insists on it (InvalidArgument where the graph does
    not allow it); False keeps the growing cache. See the module docs.
    ``on_token(i, ids)``, when given, is called as soon as token ``i`` (1-based) is chosen, with
    its ids (one per row), before the pass that feeds it (streaming servers send it then); an
    exception it raises stops generation and propagates (a client that went away).
    """
    sig = model.signature
    rng_prompt, rng_sample = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    prompt_ids = _prompt_ids(model, prompt, prompt_tokens, batch, rng_prompt)
    _check_args(model, prompt_ids.shape[1], new_tokens, batch, greedy, temperature, stop_at_eos)
    if greedy or temperature < _GREEDY_BELOW_T:
        pick: Callable[[np.ndarray], np.ndarray] = _argmax
    else:
        pick = _sampler(rng_sample, temperature)

    n_prompt = prompt_ids.shape[1]
    use_shared = _use_shared_kv(model, shared_kv, io_binding)
    use_binding = use_shared or (model.device != "cpu" if io_binding is None else bool(io_binding))
    stepper_type: type = _SharedStepper if use_shared else _BoundStepper if use_binding else _PlainStepper
    stepper: _Stepper = stepper_type(model, batch, n_prompt + new_tokens)
    eos = np.asarray(model.eos_token_ids, dtype=np.int64)
    tokens = np.zeros((batch, new_tokens), dtype=np.int64)
    durations: list[float] = []
    finished = np.zeros(batch, dtype=bool)
    mark = meter.mark if meter is not None else None
    ids = np.empty((batch, 1), dtype=sig.ids_dtype)  # decode input, rewritten in place
    labels = [f"token-{i}" for i in range(1, new_tokens + 1)]  # built before the timed loop
    clock = time.perf_counter

    if mark is not None:
        mark("setup")
    t_start = clock()
    last = stepper.prefill(prompt_ids.astype(sig.ids_dtype, copy=False))
    stepper.synchronize()
    t_prev = clock()
    prefill_s = t_prev - t_start
    if mark is not None:
        mark("prefill")
        # a meter may offer a cheaper mark for tokens (greenprof.Meter.token_marker)
        if getattr(type(meter), "token_marker", None) is not None:
            mark = meter.token_marker()
    token = pick(last)

    produced = new_tokens
    for i in range(1, new_tokens + 1):
        if stop_at_eos:
            token = np.where(finished, eos[0], token)  # finished rows are padded with EOS
            finished |= np.isin(token, eos)
        tokens[:, i - 1] = token
        if on_token is not None:
            on_token(i, token)
        ids[:, 0] = token
        last = stepper.decode(ids, past_len=n_prompt + i - 1)
        stepper.synchronize()
        now = clock()
        durations.append(now - t_prev)
        t_prev = now
        if mark is not None:
            mark(labels[i - 1])
        if stop_at_eos and finished.all():
            produced = i
            break
        if i < new_tokens:  # the last pass's logits are not sampled
            token = pick(last)

    tokens = tokens[:, :produced]
    texts = _decode(model, tokens)
    return Generation(
        token_ids=tokens,
        prompt_ids=prompt_ids,
        text=texts[0] if texts else None,
        texts=texts,
        prompt_tokens=n_prompt,
        new_tokens=produced,
        batch=batch,
        prefill_duration_s=prefill_s,
        token_durations_s=durations,
        measurement=_measurement_of(meter),
        io_binding=use_binding,
        shared_kv=use_shared,
    )


def _prompt_ids(
    model: LoadedModel, prompt: str | None, prompt_tokens: int | None, batch: int, rng: np.random.Generator
) -> np.ndarray:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InvalidArgument(f"batch={batch!r}: give a positive number of sequences")
    if prompt is not None and prompt_tokens is not None:
        raise InvalidArgument("give either prompt= (text) or prompt_tokens= (a random prompt of N token ids), not both")
    if prompt is not None:
        if model.tokenizer is None:
            raise TokenizerMissing(
                f"a text prompt was given but {model.folder} has no tokenizer.json: put the model's "
                "tokenizer.json beside the .onnx file, or pass prompt_tokens=N for a random prompt"
            )
        ids = model.tokenizer.encode(prompt).ids
        if not ids:
            raise InvalidArgument("the prompt encodes to zero tokens: give a non-empty prompt")
        return np.tile(np.asarray(ids, dtype=np.int64), (batch, 1))
    if prompt_tokens is None:
        raise InvalidArgument("give prompt= (text) or prompt_tokens= (a random prompt of N token ids)")
    if not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool) or prompt_tokens < 1:
        raise InvalidArgument(f"prompt_tokens={prompt_tokens!r}: give a positive number of prompt tokens")
    vocab = model.vocab_size
    if vocab is None:
        raise InvalidArgument(
            f"{model.path.name} does not say its vocabulary size (symbolic logits, no tokenizer): "
            "add its tokenizer.json, or pass a text prompt"
        )
    ids = rng.integers(0, vocab, size=(batch, prompt_tokens), dtype=np.int64)
    # Keep EOS out of a random prompt: some models behave oddly after an early EOS.
    for e in model.eos_token_ids:
        ids[ids == e] = (e + 1) % vocab
    return ids


def _check_args(
    model: LoadedModel, n_prompt: int, new_tokens: int, batch: int, greedy: bool, temperature: float, stop_at_eos: bool
) -> None:
    sig = model.signature
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 1:
        raise InvalidArgument(f"new_tokens={new_tokens!r}: give a positive number of tokens to generate")
    if sig.fixed_batch is not None and batch != sig.fixed_batch:
        raise InvalidArgument(
            f"batch={batch}: {model.path.name} was exported with a fixed batch size of {sig.fixed_batch}; "
            "re-export it with a dynamic batch axis to run other batch sizes"
        )
    if model.context_length is not None and n_prompt + new_tokens > model.context_length:
        raise InvalidArgument(
            f"prompt ({n_prompt}) + new_tokens ({new_tokens}) exceeds the model's context length "
            f"{model.context_length}: shorten the prompt or generate fewer tokens"
        )
    if not greedy and not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise InvalidArgument(f"temperature={temperature!r}: sampling needs a finite temperature > 0 (or greedy=True)")
    if stop_at_eos and not model.eos_token_ids:
        raise InvalidArgument(
            f"stop_at_eos=True but {model.folder} gives no EOS token id (genai_config.json, "
            "config.json, generation_config.json or tokenizer.json): generate a fixed length instead"
        )


def _argmax(last: np.ndarray) -> np.ndarray:
    return np.argmax(last, axis=-1).astype(np.int64, copy=False)


#: vocabulary entries per block of the sampler's two-level search
_SAMPLE_BLOCK = 256
#: up to this many vocabulary entries the sampler uses the Gumbel-max trick (fewer numpy calls)
_GUMBEL_MAX_VOCAB = 2048


#: Below this temperature sampling is greedy: float32 logits a step apart differ by at least about
#: 1e-7 of their size, divided by T that is a gap of 1e23 or more, so every token but the top one
#: has probability exp(-1e23) = 0 in floating point (and 1 / T would overflow float32 below 3e-39).
_GREEDY_BELOW_T = 1e-30


def _sampler(rng: np.random.Generator, temperature: float) -> Callable[[np.ndarray], np.ndarray]:
    """Sample from softmax(logits / T), exactly, one token per row.

    Small vocabularies (up to :data:`_GUMBEL_MAX_VOCAB`) use the Gumbel-max trick:
    argmax(logits / T + Gumbel noise). Its cost grows with the vocabulary (one noise draw and two
    logarithms per entry), so larger ones invert the CDF with one uniform draw per row instead:
    exp((logits - max) / T) in float32 (the logits' own precision), a block of
    :data:`_SAMPLE_BLOCK` entries picked by the blocks' running sum (float64), then the entry
    within it. Vectorised block sums and two short running sums replace a running sum over the
    whole vocabulary, which numpy does not vectorise; a token's probability is off by about
    1e-7 of the total at most. Measured here for one row: at 49,152 entries the CDF took
    0.14 ms against the Gumbel trick's 1.6 ms; at 512 the Gumbel trick took 17 us against 35.
    """
    inv_t = np.float32(1.0 / temperature)
    b = _SAMPLE_BLOCK

    def pick(last: np.ndarray) -> np.ndarray:
        rows, v = last.shape
        if v <= _GUMBEL_MAX_VOCAB:
            scores = last.astype(np.float64) / temperature + rng.gumbel(size=last.shape)
            return np.argmax(scores, axis=-1).astype(np.int64, copy=False)
        nb = -(-v // b)
        w = np.zeros((rows, nb * b), dtype=np.float32)  # the tail of the last block stays 0
        head = w[:, :v]
        np.subtract(last, last.max(axis=-1, keepdims=True), out=head, dtype=np.float32)
        head *= inv_t
        np.exp(head, out=head)
        block_mass = w.reshape(rows, nb, b).sum(axis=-1)
        block_cdf = np.cumsum(block_mass, axis=-1, dtype=np.float64)
        u = rng.random(rows) * block_cdf[:, -1]
        out = np.empty(rows, dtype=np.int64)
        for r in range(rows):
            k = int(np.searchsorted(block_cdf[r], u[r], side="right"))
            if k >= nb:  # u rounded up to the total: the last block with mass
                k = int(np.flatnonzero(block_mass[r])[-1])
            rest = u[r] - (block_cdf[r, k - 1] if k else 0.0)
            block = w[r, k * b:(k + 1) * b]
            j = int(np.searchsorted(np.cumsum(block, dtype=np.float64), rest, side="right"))
            if j >= b:  # the block's float32 sum and its float64 running sum differ by rounding
                j = int(np.flatnonzero(block)[-1])
            out[r] = k * b + j
        return out

    return pick


def _decode(model: LoadedModel, tokens: np.ndarray) -> list[str] | None:
    if model.tokenizer is None:
        return None
    return [model.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in tokens]


def _measurement_of(meter: Any) -> Any | None:
    """The meter's measurement if it is already available (the meter has exited), else None."""
    if meter is None:
        return None
    try:
        return getattr(meter, "measurement", None)
    except Exception:  # a meter still running may refuse to build its measurement
        return None


# --------------------------------------------------------------------------- steppers


class _Stepper(Protocol):
    def prefill(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Run the prompt pass with an empty past; return last-position logits (batch, vocab)."""
        ...

    def decode(self, ids: np.ndarray, past_len: int) -> np.ndarray:
        """Run one decode pass for ids (batch, 1); return last-position logits."""
        ...

    def synchronize(self) -> None:
        """Block until the device has finished the last pass."""
        ...


class _Buffers:
    """Preallocated attention-mask and position-id arrays, shared by both steppers.

    The mask is all ones, so any (batch, total) reshape of a prefix of one flat buffer is a
    correct, contiguous mask: no per-step allocation and no non-contiguous slice for
    onnxruntime to copy. Decode positions come from a (length, batch) table whose row t,
    reshaped to (batch, 1), holds position t for every row.
    """

    def __init__(self, model: LoadedModel, batch: int, max_len: int) -> None:
        sig = model.signature
        self.batch = batch
        self._ones = np.ones(batch * max_len, dtype=sig.mask_dtype)
        self._positions = np.repeat(np.arange(max_len, dtype=sig.position_dtype), batch).reshape(max_len, batch)
        self.empty_past = np.zeros((batch, sig.num_kv_heads, 0, sig.head_dim), dtype=sig.kv_dtype)

    def mask(self, total: int) -> np.ndarray:
        return self._ones[: self.batch * total].reshape(self.batch, total)

    def prefill_positions(self, n: int) -> np.ndarray:
        return np.ascontiguousarray(self._positions[:n].T)

    def decode_positions(self, position: int) -> np.ndarray:
        return self._positions[position].reshape(self.batch, 1)


def _bind_host_inputs(binding: Any, sig: Any, buf: _Buffers, ids: np.ndarray, total: int,
                      positions: np.ndarray) -> None:
    """Bind a step's small host inputs (onnxruntime copies them to the device when it is not
    the CPU): the ids, a (batch, total) mask and the positions, where the graph has them."""
    binding.bind_cpu_input(sig.input_ids, ids)
    if sig.attention_mask:
        binding.bind_cpu_input(sig.attention_mask, buf.mask(total))
    if sig.position_ids:
        binding.bind_cpu_input(sig.position_ids, positions)


class _GrowingStepper:
    """Prefill and decode as one ``_step(ids, total_length, positions)``: the cache grows by the
    pass's tokens (past in, one-longer present out)."""

    _buf: _Buffers

    def _step(self, ids: np.ndarray, total: int, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prefill(self, prompt_ids: np.ndarray) -> np.ndarray:
        n = prompt_ids.shape[1]
        return self._step(prompt_ids, n, self._buf.prefill_positions(n))

    def decode(self, ids: np.ndarray, past_len: int) -> np.ndarray:
        return self._step(ids, past_len + 1, self._buf.decode_positions(past_len))


class _PlainStepper(_GrowingStepper):
    """``session.run`` with numpy feeds; presents come back as numpy and are fed back as-is."""

    def __init__(self, model: LoadedModel, batch: int, max_len: int) -> None:
        sig = model.signature
        self._sig = sig
        self._run = model.session.run
        self._outputs = sig.output_names
        self._buf = _Buffers(model, batch, max_len)
        self._feeds: dict[str, np.ndarray] = {name: self._buf.empty_past for name in (*sig.past_keys, *sig.past_values)}
        if sig.use_cache_branch:
            self._feeds[sig.use_cache_branch] = np.array([False])

    def _step(self, ids: np.ndarray, total: int, positions: np.ndarray) -> np.ndarray:
        sig, feeds = self._sig, self._feeds
        feeds[sig.input_ids] = ids
        if sig.attention_mask:
            feeds[sig.attention_mask] = self._buf.mask(total)
        if sig.position_ids:
            feeds[sig.position_ids] = positions
        outs = self._run(self._outputs, feeds)
        # outputs are logits, then (key, value) per layer: see Signature.output_names
        for layer, (k, v) in enumerate(zip(sig.past_keys, sig.past_values)):
            feeds[k] = outs[1 + 2 * layer]
            feeds[v] = outs[2 + 2 * layer]
        if sig.use_cache_branch:
            feeds[sig.use_cache_branch] = np.array([True])
        return outs[0][:, -1, :]

    def synchronize(self) -> None:
        pass  # session.run returns host arrays: the work is done


class _BoundStepper(_GrowingStepper):
    """IOBinding: presents stay as device OrtValues and are re-bound as the next past.

    Outputs must be re-bound every step: the present length grows by one, and onnxruntime
    rejects a previously allocated output of the old shape (binding with a device only lets it
    allocate one of the right shape). Holding the previous step's
    OrtValues in ``self._past`` keeps their memory alive while they are bound as inputs.
    """

    def __init__(self, model: LoadedModel, batch: int, max_len: int) -> None:
        import onnxruntime as ort

        sig = model.signature
        self._sig = sig
        self._session = model.session
        self._binding = model.session.io_binding()
        self._device = model.device
        self._device_id = model.device_id
        self._buf = _Buffers(model, batch, max_len)
        empty = ort.OrtValue.ortvalue_from_numpy(self._buf.empty_past, self._device, self._device_id)
        self._past: list[Any] = [empty] * (2 * sig.num_layers)
        self._pairs = [name for kv in zip(sig.past_keys, sig.past_values) for name in kv]
        self._present = [name for kv in zip(sig.present_keys, sig.present_values) for name in kv]
        self._use_cache = np.array([False])

    def _step(self, ids: np.ndarray, total: int, positions: np.ndarray) -> np.ndarray:
        sig, b = self._sig, self._binding
        _bind_host_inputs(b, sig, self._buf, ids, total, positions)
        if sig.use_cache_branch:
            b.bind_cpu_input(sig.use_cache_branch, self._use_cache)
        for name, value in zip(self._pairs, self._past):
            b.bind_ortvalue_input(name, value)
        # Re-binding a name replaces its binding (cheaper than clear_binding_outputs()).
        b.bind_output(sig.logits, "cpu")  # logits are argmaxed on the host
        for name in self._present:
            b.bind_output(name, self._device, self._device_id)
        self._session.run_with_iobinding(b)
        outs = b.get_outputs()
        self._past = [outs[i] for i in range(1, len(self._present) + 1)]
        self._use_cache = np.array([True])
        return outs[0].numpy()[:, -1, :]

    def synchronize(self) -> None:
        if self._device != "cpu":
            self._binding.synchronize_outputs()


class _SharedStepper:
    """IOBinding with one max-length KV buffer per past/present pair, bound once as both.

    Each ``(batch, kv_heads, max_len, head_dim)`` OrtValue is bound as ``past_key_values.i.*``
    and as ``present.i.*``; GroupQueryAttention sees the aliased buffers and writes only the new
    positions, in place (see the module docs). The bindings never change: a step re-binds only
    the small host inputs. Decode logits land in one preallocated host array (no allocation,
    no copy out of an OrtValue); the prompt pass's logits, of another shape, are allocated.
    """

    def __init__(self, model: LoadedModel, batch: int, max_len: int) -> None:
        import onnxruntime as ort

        sig = model.signature
        self._sig = sig
        self._session = model.session
        self._device = model.device
        self._buf = _Buffers(model, batch, max_len)
        b = self._binding = model.session.io_binding()
        b.bind_output(sig.logits, "cpu")  # bound first: index 0 of get_outputs()
        shape = (batch, sig.num_kv_heads, max_len, sig.head_dim)
        self._host_kv: list[np.ndarray] = []  # CPU buffers: the OrtValues wrap these arrays
        self._kv: list[Any] = []
        for names in zip(sig.past_keys, sig.present_keys), zip(sig.past_values, sig.present_values):
            for past, present in names:
                # Zeroed so no uninitialized memory is ever bound (only the valid prefix is read).
                # On the CPU the OrtValue wraps the array itself; on a GPU it is copied over once.
                zeros = np.zeros(shape, dtype=sig.kv_dtype)
                value = ort.OrtValue.ortvalue_from_numpy(zeros, self._device, model.device_id)
                if self._device == "cpu":
                    self._host_kv.append(zeros)
                self._kv.append(value)
                b.bind_ortvalue_input(past, value)
                b.bind_ortvalue_output(present, value)
        self._logits: np.ndarray | None = None
        self._logits_value: Any = None
        if sig.vocab_size is not None:
            self._logits = np.empty((batch, 1, sig.vocab_size), dtype=sig.logits_dtype)
            self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)

    def prefill(self, prompt_ids: np.ndarray) -> np.ndarray:
        n = prompt_ids.shape[1]
        self._bind_inputs(prompt_ids, n, self._buf.prefill_positions(n))
        self._session.run_with_iobinding(self._binding)
        last = self._binding.get_outputs()[0].numpy()[:, -1, :]
        if self._logits_value is not None:  # decode steps write their logits into self._logits
            self._binding.bind_ortvalue_output(self._sig.logits, self._logits_value)
        return last

    def decode(self, ids: np.ndarray, past_len: int) -> np.ndarray:
        self._bind_inputs(ids, past_len + 1, self._buf.decode_positions(past_len))
        self._session.run_with_iobinding(self._binding)
        if self._logits is not None:
            return self._logits[:, -1, :]  # overwritten by the next step: picked before it
        return self._binding.get_outputs()[0].numpy()[:, -1, :]

    def _bind_inputs(self, ids: np.ndarray, total: int, positions: np.ndarray) -> None:
        # The mask is (batch, total) ones, as with the growing cache (seqlens_k = total - 1,
        # total_sequence_length = total): the buffers' max length is only their allocation.
        _bind_host_inputs(self._binding, self._sig, self._buf, ids, total, positions)

    def synchronize(self) -> None:
        if self._device != "cpu":
            self._binding.synchronize_outputs()


# --------------------------------------------------------------------------- shared KV support

_GQA_OP = b"GroupQueryAttention"


def shared_kv_blocker(model: LoadedModel) -> str | None:
    """Why ``model`` cannot run with a shared past/present KV buffer, or None when it can.

    The buffer is bound with the past's shape changed from ``past`` to the maximum length, so
    every ``past_key_values.i.key/value`` must be read by nothing but one com.microsoft
    GroupQueryAttention node (as its ``past_key`` / ``past_value``, inputs 3 and 4) whose
    ``present_key`` / ``present_value`` outputs are ``present.i.key/value`` and read by no other
    node: a graph that takes ``Shape(past)`` or concatenates the past itself would see the
    buffer's length instead of the valid one. The ONNX file is scanned for the op name first
    (cheap); only files that contain it are parsed (graph only, no external weights), once per
    file version.
    """
    sig = model.signature
    if model.provider not in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        return f"the shared KV buffer is implemented for the CPU and CUDA providers, not {model.provider}"
    if sig.attention_mask is None:
        return f"{model.path.name} has no attention_mask input (GroupQueryAttention's lengths come from it)"
    if sig.use_cache_branch:
        return f"{model.path.name} is a merged decoder (use_cache_branch): its attention sits in subgraphs"
    path = Path(model.path)
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot read {path}: {exc}"
    pairs = tuple(zip(sig.past_keys, sig.past_values, sig.present_keys, sig.present_values))
    return _graph_blocker(str(path), st.st_size, st.st_mtime_ns, pairs)


@lru_cache(maxsize=32)
def _graph_blocker(path: str, size: int, mtime_ns: int, pairs: tuple[tuple[str, str, str, str], ...]) -> str | None:
    name = os.path.basename(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            has_gqa = mm.find(_GQA_OP) >= 0
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        return f"cannot scan {name}: {exc}"
    if not has_gqa:
        return f"{name} has no GroupQueryAttention node (the shared buffer needs its in-place KV update)"
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends
        return f"cannot parse the graph of {name}: {exc}"
    subgraph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    consumers: dict[str, list[tuple[int, int]]] = {}
    for n, node in enumerate(graph.node):
        if any(a.type in subgraph_types for a in node.attribute):
            return f"{name} has control-flow subgraphs ({node.op_type} {node.name!r})"
        for slot, tensor in enumerate(node.input):
            if tensor:
                consumers.setdefault(tensor, []).append((n, slot))
    for past_k, past_v, present_k, present_v in pairs:
        uses_k, uses_v = consumers.get(past_k, []), consumers.get(past_v, [])
        if len(uses_k) != 1 or len(uses_v) != 1:
            return (f"{past_k} / {past_v} are read by {len(uses_k)} / {len(uses_v)} nodes of {name}, "
                    "not by one GroupQueryAttention alone")
        (nk, slot_k), (nv, slot_v) = uses_k[0], uses_v[0]
        node = graph.node[nk]
        is_gqa = node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft"
        if nk != nv or not is_gqa or (slot_k, slot_v) != (3, 4):
            return f"{past_k} / {past_v} are not past_key / past_value of one GroupQueryAttention node in {name}"
        if list(node.output[1:3]) != [present_k, present_v]:
            return f"{present_k} / {present_v} are not the present outputs of the GroupQueryAttention reading {past_k}"
        if consumers.get(present_k) or consumers.get(present_v):
            return f"{present_k} / {present_v} are read inside {name}"
    return None


def _use_shared_kv(model: LoadedModel, shared_kv: bool | None, io_binding: bool | None) -> bool:
    if shared_kv is not None and not isinstance(shared_kv, bool):
        raise InvalidArgument(f"shared_kv={shared_kv!r}: give True, False or None (use it where it applies)")
    if shared_kv is False:
        return False
    if shared_kv is None:
        # Automatic where it was measured: the CPU, for any folder whose graph allows it (greenprof's
        # built-in models and onnxruntime-genai exports alike: shared_kv_blocker checks the graph).
        if io_binding is False or model.device != "cpu":
            return False
        return shared_kv_blocker(model) is None
    if io_binding is False:
        raise InvalidArgument("shared_kv=True binds the KV buffers through IOBinding: leave io_binding at None or True")
    reason = shared_kv_blocker(model)
    if reason is not None:
        raise InvalidArgument(f"shared_kv=True, but {reason}: leave shared_kv at None or False for this model")
    return True


