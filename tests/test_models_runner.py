"""greenprof.models.runner: KV-cache generation, marks, EOS handling, sampling, attribution, CI.

Two kinds of model:

* toy decoders built with the onnx helper API (test_models_loader.py): always run; their
  cached generation is checked against full re-runs without a cache;
* a tiny Llama (hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 256) with random weights,
  exported by torch.onnx (TorchScript exporter) to the optimum signature and to an
  onnxruntime-genai style folder: greedy tokens must equal transformers' own greedy generation
  from the same weights. Skipped when torch or transformers cannot be imported.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_models_loader import byte_tokenizer, genai_config, toy_decoder

from greenprof.models import errors as merr
from greenprof.models.loader import LoadedModel, load
from greenprof.errors import UsageError
from greenprof.accounting import attribute, interval95, t_quantile
from greenprof.models.runner import generate

# --------------------------------------------------------------------------- helpers


class FakeMeter:
    """Records mark labels and times, like greenprof.Meter's mark() would."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.times: list[float] = []
        self.measurement: Any = None  # a real meter fills this in on exit

    def mark(self, label: str) -> None:
        self.labels.append(label)
        self.times.append(time.perf_counter())


def reference_greedy(model: LoadedModel, prompt: np.ndarray, n: int) -> np.ndarray:
    """Greedy tokens by re-running the whole sequence with an empty past at every step."""
    sig = model.signature
    seq = prompt.astype(np.int64)
    batch = seq.shape[0]
    out = []
    for _ in range(n):
        t = seq.shape[1]
        feeds: dict[str, np.ndarray] = {sig.input_ids: seq, sig.attention_mask: np.ones((batch, t), np.int64)}
        if sig.position_ids:
            feeds[sig.position_ids] = np.tile(np.arange(t, dtype=np.int64), (batch, 1))
        empty = np.zeros((batch, sig.num_kv_heads, 0, sig.head_dim), sig.kv_dtype)
        for name in (*sig.past_keys, *sig.past_values):
            feeds[name] = empty
        if sig.use_cache_branch:
            feeds[sig.use_cache_branch] = np.array([False])
        logits = model.session.run([sig.logits], feeds)[0]
        nxt = logits[:, -1].argmax(-1)
        out.append(nxt)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return np.stack(out, axis=1)


@pytest.fixture
def toy(tmp_path: Path) -> LoadedModel:
    return load(toy_decoder(tmp_path / "toy" / "model.onnx"))


# --------------------------------------------------------------------------- KV handling (toy)


@pytest.mark.parametrize("io_binding", [True, False])
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"kv_dtype": np.float16},
        {"use_cache_branch": True},
        {"position_ids": False},
        {"layers": 5, "kv_heads": 3, "head_dim": 2},
    ],
    ids=["fp32", "fp16-kv", "use-cache-branch", "no-position-ids", "5-layers"],
)
def test_cached_generation_matches_full_reruns(tmp_path: Path, io_binding: bool, variant: dict[str, Any]) -> None:
    model = load(toy_decoder(tmp_path / "model.onnx", **variant))
    gen = generate(model, prompt_tokens=7, new_tokens=12, batch=2, seed=5, io_binding=io_binding)
    assert gen.token_ids.shape == (2, 12) and gen.prompt_ids.shape == (2, 7)
    assert gen.io_binding is io_binding
    np.testing.assert_array_equal(gen.token_ids, reference_greedy(model, gen.prompt_ids, 12))


def test_genai_toy_folder_generates(tmp_path: Path) -> None:
    toy_decoder(tmp_path / "model.onnx", position_ids=False)
    genai_config(tmp_path, "model.onnx", layers=2, kv_heads=2, head_dim=4, vocab=32)
    model = load(tmp_path)
    gen = generate(model, prompt_tokens=4, new_tokens=6)
    np.testing.assert_array_equal(gen.token_ids, reference_greedy(model, gen.prompt_ids, 6))


def test_plain_and_bound_agree(toy: LoadedModel) -> None:
    a = generate(toy, prompt_tokens=9, new_tokens=20, io_binding=True)
    b = generate(toy, prompt_tokens=9, new_tokens=20, io_binding=False)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    # on CPU session.run is zero-copy and measured faster: it is the default there
    assert generate(toy, prompt_tokens=2, new_tokens=1).io_binding is False


# --------------------------------------------------------------------------- marks and timing


def test_marks_once_for_prefill_and_once_per_token(toy: LoadedModel) -> None:
    meter = FakeMeter()
    gen = generate(toy, prompt_tokens=5, new_tokens=8, meter=meter)
    assert meter.labels == ["setup", "prefill"] + [f"token-{i}" for i in range(1, 9)]
    assert all(b >= a for a, b in zip(meter.times, meter.times[1:]))
    assert gen.new_tokens == 8 and len(gen.token_durations_s) == 8
    assert gen.prefill_duration_s > 0 and all(d > 0 for d in gen.token_durations_s)
    assert gen.decode_duration_s == pytest.approx(sum(gen.token_durations_s))
    assert gen.decode_tokens_per_s == pytest.approx(8 / gen.decode_duration_s)
    # durations run mark to mark, so they fit inside the mark timeline
    assert gen.decode_duration_s <= meter.times[-1] - meter.times[0] + 1e-3
    assert gen.measurement is None  # the meter has not exited


def test_measurement_taken_from_an_exited_meter(toy: LoadedModel) -> None:
    meter = FakeMeter()
    meter.measurement = sentinel = object()
    assert generate(toy, prompt_tokens=2, new_tokens=1, meter=meter).measurement is sentinel

    class Running(FakeMeter):
        @property  # type: ignore[override]
        def measurement(self) -> Any:
            raise RuntimeError("meter still running")

        @measurement.setter
        def measurement(self, value: Any) -> None:
            pass

    assert generate(toy, prompt_tokens=2, new_tokens=1, meter=Running()).measurement is None


# --------------------------------------------------------------------------- EOS


def _with_eos(model: LoadedModel, eos: list[int]) -> LoadedModel:
    (model.folder / "config.json").write_text(json.dumps({"eos_token_id": eos}))
    reloaded = load(model.path)
    assert reloaded.eos_token_ids == tuple(eos)
    return reloaded


def test_fixed_length_ignores_eos_and_stop_at_eos_stops(toy: LoadedModel) -> None:
    free = generate(toy, prompt_tokens=6, new_tokens=16, seed=1).token_ids[0]
    eos = int(free[4])
    first = int(np.flatnonzero(free == eos)[0])  # the EOS may also occur before index 4
    model = _with_eos(toy, [eos])

    fixed = generate(model, prompt_tokens=6, new_tokens=16, seed=1)
    assert fixed.new_tokens == 16
    np.testing.assert_array_equal(fixed.token_ids[0], free)

    meter = FakeMeter()
    stopped = generate(model, prompt_tokens=6, new_tokens=16, seed=1, stop_at_eos=True, meter=meter)
    assert stopped.new_tokens == first + 1  # the EOS is generated (and fed) as the last token
    np.testing.assert_array_equal(stopped.token_ids[0], free[: first + 1])
    assert meter.labels == ["setup", "prefill"] + [f"token-{i}" for i in range(1, first + 2)]
    assert len(stopped.token_durations_s) == first + 1


def test_stop_at_eos_with_a_batch_pads_finished_rows(toy: LoadedModel) -> None:
    free = generate(toy, prompt_tokens=5, new_tokens=20, batch=2, seed=2).token_ids
    eos_ids = [int(free[0, 2]), int(free[1, 6])]
    model = _with_eos(toy, eos_ids)
    gen = generate(model, prompt_tokens=5, new_tokens=20, batch=2, seed=2, stop_at_eos=True)
    finish = [int(np.flatnonzero(np.isin(row, eos_ids))[0]) for row in free]
    assert gen.new_tokens == max(finish) + 1
    for r, f in enumerate(finish):
        np.testing.assert_array_equal(gen.token_ids[r, : f + 1], free[r, : f + 1])
        assert (gen.token_ids[r, f + 1 :] == eos_ids[0]).all()


def test_stop_at_eos_needs_an_eos_id(toy: LoadedModel) -> None:
    with pytest.raises(merr.InvalidArgument, match="no EOS token id"):
        generate(toy, prompt_tokens=3, new_tokens=3, stop_at_eos=True)


def test_synthetic_prompt_avoids_eos(toy: LoadedModel) -> None:
    model = _with_eos(toy, [0, 1, 2])
    gen = generate(model, prompt_tokens=500, new_tokens=1, seed=0)
    assert not np.isin(gen.prompt_ids, [0, 1, 2]).any()
    assert gen.prompt_ids.min() >= 0 and gen.prompt_ids.max() < 32


# --------------------------------------------------------------------------- sampling, prompts


def test_seeded_sampling_is_reproducible(toy: LoadedModel) -> None:
    a = generate(toy, prompt_tokens=4, new_tokens=30, greedy=False, seed=3, temperature=1.5)
    b = generate(toy, prompt_tokens=4, new_tokens=30, greedy=False, seed=3, temperature=1.5)
    c = generate(toy, prompt_tokens=4, new_tokens=30, greedy=False, seed=4, temperature=1.5)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.prompt_ids, b.prompt_ids)
    assert not np.array_equal(a.token_ids, c.token_ids)
    # a near-zero temperature is greedy
    cold = generate(toy, prompt_tokens=4, new_tokens=30, greedy=False, seed=3, temperature=1e-6)
    greedy = generate(toy, prompt_tokens=4, new_tokens=30, greedy=True, seed=3)
    np.testing.assert_array_equal(cold.token_ids, greedy.token_ids)
    # so small that 1 / T overflows: still greedy, with no overflow warning
    import warnings

    for t in (1e-40, 1e-310):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tiny_t = generate(toy, prompt_tokens=4, new_tokens=30, greedy=False, seed=3, temperature=t)
        np.testing.assert_array_equal(tiny_t.token_ids, greedy.token_ids)


@pytest.mark.parametrize("vocab", [3, 49152])  # the Gumbel-max path and the CDF path
def test_sampling_follows_softmax(vocab: int) -> None:
    """The sampler draws from softmax(logits / T), at T = 1 and T = 0.5, for every row. In the
    large vocabulary the three tokens with mass sit in different blocks, one in the last
    (partial) block, and every other entry has probability 0."""
    from greenprof.models.runner import _sampler

    p = np.array([0.1, 0.2, 0.7])
    where = [0, 1, 2] if vocab == 3 else [5, 20000, vocab - 1]
    logits = np.full((2, vocab), -np.inf, np.float32)
    logits[0, where], logits[1, where] = np.log(p), np.log(p[::-1])
    for temperature in (1.0, 0.5):
        pick = _sampler(np.random.default_rng(0), temperature)
        draws = np.array([pick(logits) for _ in range(20000 if vocab == 3 else 4000)])
        assert set(np.unique(draws)) <= set(where)
        want = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
        for row, expect in ((0, want), (1, want[::-1])):
            freq = np.array([(draws[:, row] == i).mean() for i in where])
            np.testing.assert_allclose(freq, expect, atol=0.015 if vocab == 3 else 0.03)
    # the ends of the uniform draw pick the first and the last token with mass, never one without
    class Fixed:
        def __init__(self, u: float) -> None:
            self.u = u

        def random(self, n: int) -> np.ndarray:
            return np.full(n, self.u)

    if vocab > 3:
        lowest, highest = _sampler(Fixed(0.0), 1.0)(logits), _sampler(Fixed(np.nextafter(1.0, 0.0)), 1.0)(logits)
        assert lowest.tolist() == [where[0], where[0]] and highest.tolist() == [where[-1], where[-1]]
    # a near-zero temperature is greedy
    scores = np.random.default_rng(1).standard_normal((3, vocab)).astype(np.float32)
    np.testing.assert_array_equal(_sampler(np.random.default_rng(2), 1e-6)(scores), scores.argmax(axis=-1))


def test_text_prompt_uses_the_tokenizer(tmp_path: Path) -> None:
    f = toy_decoder(tmp_path / "model.onnx", vocab=256)
    byte_tokenizer(tmp_path / "tokenizer.json")
    model = load(f)
    gen = generate(model, prompt="Hello, joules!", new_tokens=5, batch=2)
    assert gen.prompt_tokens == len("Hello, joules!")
    np.testing.assert_array_equal(gen.prompt_ids[0], model.tokenizer.encode("Hello, joules!").ids)
    np.testing.assert_array_equal(gen.prompt_ids[0], gen.prompt_ids[1])
    assert isinstance(gen.text, str) and gen.texts is not None and len(gen.texts) == 2
    assert gen.text == model.tokenizer.decode(gen.token_ids[0].tolist())


def test_text_prompt_without_tokenizer(toy: LoadedModel) -> None:
    with pytest.raises(merr.TokenizerMissing) as err:
        generate(toy, prompt="hello", new_tokens=2)
    msg = str(err.value)
    assert "has no tokenizer.json" in msg and "prompt_tokens=N" in msg


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({}, "give prompt= .text. or prompt_tokens="),
        ({"prompt": "x", "prompt_tokens": 3}, "not both"),
        ({"prompt_tokens": 0}, "prompt_tokens=0"),
        ({"prompt_tokens": 3, "new_tokens": 0}, "new_tokens=0"),
        ({"prompt_tokens": 3, "batch": 0}, "batch=0"),
        ({"prompt_tokens": 3, "greedy": False, "temperature": 0.0}, "temperature=0.0"),
    ],
)
def test_bad_generation_arguments(toy: LoadedModel, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(merr.InvalidArgument, match=needle):
        generate(toy, **kwargs)


def test_fixed_batch_model_refuses_other_batches(tmp_path: Path) -> None:
    model = load(toy_decoder(tmp_path / "model.onnx", batch_dim=1))
    assert generate(model, prompt_tokens=3, new_tokens=2).token_ids.shape == (1, 2)
    with pytest.raises(merr.InvalidArgument, match="fixed batch size of 1"):
        generate(model, prompt_tokens=3, new_tokens=2, batch=2)


def test_context_length_is_enforced(toy: LoadedModel) -> None:
    (toy.folder / "config.json").write_text(json.dumps({"max_position_embeddings": 16}))
    model = load(toy.path)
    generate(model, prompt_tokens=8, new_tokens=8)
    with pytest.raises(merr.InvalidArgument, match="exceeds the model's context length 16"):
        generate(model, prompt_tokens=8, new_tokens=9)


# --------------------------------------------------------------------------- shared KV buffer (built-in GQA)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    """The built-in tiny model (GroupQueryAttention), built once into the session's cache."""
    from greenprof.models.builder import build

    return build("tiny", "fp32")


def _teacher_forced(stepper: Any, prompt: np.ndarray, tokens: np.ndarray) -> list[np.ndarray]:
    """Last-position logits of the prompt pass and of one decode pass per forced token."""
    out = [stepper.prefill(prompt).copy()]
    ids = np.empty((prompt.shape[0], 1), np.int64)
    for i in range(tokens.shape[1]):
        ids[:, 0] = tokens[:, i]
        out.append(stepper.decode(ids, past_len=prompt.shape[1] + i).copy())
    return out


@pytest.mark.parametrize("batch", [1, 2])
def test_shared_kv_equals_the_growing_cache(tiny_dir: Path, batch: int) -> None:
    """Same logits at every step (|diff| <= 1e-4; bit-identical in practice) and the same KV."""
    from greenprof.models import runner

    model = load(tiny_dir, threads=1)
    assert runner.shared_kv_blocker(model) is None
    sig = model.signature
    n_prompt, n_new = 11, 24
    rng = np.random.default_rng(batch)
    prompt = rng.integers(0, sig.vocab_size, (batch, n_prompt))
    forced = rng.integers(0, sig.vocab_size, (batch, n_new))
    plain = runner._PlainStepper(model, batch, n_prompt + n_new)
    shared = runner._SharedStepper(model, batch, n_prompt + n_new)
    a, b = _teacher_forced(plain, prompt, forced), _teacher_forced(shared, prompt, forced)
    assert len(a) == len(b) == n_new + 1
    for step, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape == (batch, sig.vocab_size)
        assert np.abs(x - y).max() <= 1e-4, step
    # The valid prefix of each max-length buffer is the growing cache's last present.
    total = n_prompt + n_new
    past_names = [n for kv in (sig.past_keys, sig.past_values) for n in kv]
    for name, buffer in zip(past_names, shared._host_kv):
        assert buffer.shape == (batch, sig.num_kv_heads, total, sig.head_dim)
        np.testing.assert_array_equal(buffer, plain._feeds[name])


@pytest.mark.parametrize("precision", ["fp32", "int4"])
@pytest.mark.parametrize("batch", [1, 2])
def test_shared_kv_generation_equals_the_old_paths(
    tiny_dir: Path, batch: int, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate(): same greedy tokens and sampled logits as session.run and the re-bound IOBinding."""
    from greenprof.models import runner
    from greenprof.models.builder import build

    model = load(tiny_dir if precision == "fp32" else build("tiny", precision), threads=1)
    seen: list[np.ndarray] = []
    argmax = runner._argmax

    def recording_argmax(last: np.ndarray) -> np.ndarray:
        seen.append(last.copy())
        return argmax(last)

    monkeypatch.setattr(runner, "_argmax", recording_argmax)
    runs: dict[str, tuple[Any, list[np.ndarray]]] = {}
    ways: dict[str, dict[str, Any]] = {
        "shared": {},  # the default
        "plain": {"shared_kv": False},
        "bound": {"shared_kv": False, "io_binding": True},
    }
    for label, kw in ways.items():
        seen.clear()
        gen = generate(model, prompt_tokens=9, new_tokens=30, batch=batch, seed=3, **kw)
        runs[label] = (gen, list(seen))
    shared, plain, bound = (runs[k][0] for k in ("shared", "plain", "bound"))
    assert (shared.shared_kv, shared.io_binding) == (True, True)  # the default for a GQA model on CPU
    assert (plain.shared_kv, plain.io_binding) == (False, False)
    assert (bound.shared_kv, bound.io_binding) == (False, True)
    np.testing.assert_array_equal(shared.token_ids, plain.token_ids)
    np.testing.assert_array_equal(shared.token_ids, bound.token_ids)
    logits = {k: np.stack(v[1]) for k, v in runs.items()}
    assert logits["shared"].shape == (30, batch, model.signature.vocab_size)  # prefill + 29 sampled decodes
    assert np.abs(logits["shared"] - logits["plain"]).max() <= 1e-4
    assert np.abs(logits["shared"] - logits["bound"]).max() <= 1e-4
    # sampling and EOS stopping go through the same stepper
    kw = dict(prompt_tokens=5, new_tokens=20, batch=batch, greedy=False, seed=8, temperature=0.8)
    np.testing.assert_array_equal(generate(model, **kw).token_ids, generate(model, shared_kv=False, **kw).token_ids)


def test_shared_kv_reuses_one_buffer_without_reallocating(tiny_dir: Path) -> None:
    """The buffers and their bindings are set up once: decode steps re-bind only host inputs."""
    from greenprof.models import runner

    model = load(tiny_dir, threads=1)
    stepper = runner._SharedStepper(model, 1, 8)
    buffers = [b.__array_interface__["data"][0] for b in stepper._host_kv]
    last = stepper.prefill(np.array([[5, 6, 7]]))
    for i in range(5):
        last = stepper.decode(np.array([[int(last.argmax())]]), past_len=3 + i)
    assert [b.__array_interface__["data"][0] for b in stepper._host_kv] == buffers
    assert all(np.any(b[:, :, :8]) for b in stepper._host_kv)  # all 8 positions written in place
    outs = stepper._binding.get_outputs()
    assert all(o.shape() == [1, model.signature.num_kv_heads, 8, model.signature.head_dim] for o in outs[1:])


def test_non_gqa_models_keep_the_growing_cache(toy: LoadedModel, tmp_path: Path) -> None:
    from greenprof.models.builder import build
    from greenprof.models.runner import shared_kv_blocker

    # a decoder in plain ONNX ops (toy), and the built-in model with attention in standard ops
    plain_attention = load(build("tiny", "fp32", attention="plain"), threads=1)
    for model in (toy, plain_attention):
        assert "no GroupQueryAttention node" in (shared_kv_blocker(model) or "")
        for io_binding in (None, True, False):
            gen = generate(model, prompt_tokens=4, new_tokens=5, io_binding=io_binding)
            assert gen.shared_kv is False
            assert gen.io_binding is (io_binding is True)
        with pytest.raises(merr.InvalidArgument, match="shared_kv=True, but .*no GroupQueryAttention"):
            generate(model, prompt_tokens=4, new_tokens=5, shared_kv=True)
    merged = load(toy_decoder(tmp_path / "merged" / "model.onnx", use_cache_branch=True))
    assert "use_cache_branch" in (shared_kv_blocker(merged) or "")
    assert generate(merged, prompt_tokens=3, new_tokens=3).shared_kv is False


def test_gqa_graph_that_reads_the_past_elsewhere_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """A past also read by another node (here an Identity to an extra output) would see the
    buffer's max length: the graph check refuses it and generation keeps the growing cache."""
    import shutil

    import onnx
    from onnx import helper

    from greenprof.models.runner import shared_kv_blocker

    folder = tmp_path / "probe"
    shutil.copytree(tiny_dir, folder)
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    proto.graph.node.append(helper.make_node("Identity", ["past_key_values.0.key"], ["past_probe"], name="probe"))
    proto.graph.output.append(helper.make_tensor_value_info("past_probe", onnx.TensorProto.FLOAT, None))
    onnx.save(proto, str(folder / "model.onnx"))
    model = load(folder, threads=1)
    assert "read by 2 / 1 nodes" in (shared_kv_blocker(model) or "")
    assert generate(model, prompt_tokens=4, new_tokens=3).shared_kv is False


def test_genai_folder_gets_the_shared_kv_path(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GroupQueryAttention graph in an onnxruntime-genai style folder gets the shared KV buffer
    by default, as a built-in model does, with the same logits as the growing cache."""
    import shutil

    from greenprof.models import runner
    from greenprof.models.shapes import get_shape

    s = get_shape("tiny")
    folder = tmp_path / "genai"
    shutil.copytree(tiny_dir, folder)
    (folder / "greenprof-model.json").unlink()
    genai_config(folder, "model.onnx", layers=s.layers, kv_heads=s.kv_heads, head_dim=s.head_dim, vocab=s.vocab)
    model = load(folder, threads=1)
    assert model.format == "genai"
    seen: list[np.ndarray] = []
    argmax = runner._argmax

    def recording_argmax(last: np.ndarray) -> np.ndarray:
        seen.append(last.copy())
        return argmax(last)

    monkeypatch.setattr(runner, "_argmax", recording_argmax)
    auto = generate(model, prompt_tokens=6, new_tokens=10, batch=2, seed=4)
    auto_logits, seen[:] = list(seen), []
    plain = generate(model, prompt_tokens=6, new_tokens=10, batch=2, seed=4, shared_kv=False)
    assert auto.shared_kv is True and auto.io_binding is True
    assert plain.shared_kv is False and plain.io_binding is False
    np.testing.assert_array_equal(auto.token_ids, plain.token_ids)
    assert len(auto_logits) == len(seen) == 10
    np.testing.assert_array_equal(np.stack(auto_logits), np.stack(seen))


@pytest.fixture(scope="module")
def genai_export_dir() -> Path:
    """onnxruntime-genai's own export of the tiny shape (its model builder, fp32, CPU), built once
    into the session's model cache by the benchmarks' helper (shared with runner_speed's test)."""
    import importlib.util
    import sys

    missing = [m for m in ("onnxruntime_genai", "onnx_ir", "transformers", "torch") if importlib.util.find_spec(m) is None]
    assert not missing, f"the test extra's onnxruntime-genai dependencies are missing ({missing}): pip install -e '.[test]'"
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        from genai_export import genai_build
    finally:
        sys.path.remove(str(bench))
    folder, _ = genai_build("tiny", None, False)
    return folder


@pytest.mark.parametrize("batch", [1, 2])
def test_onnxruntime_genai_export_runs_on_the_shared_kv_path(genai_export_dir: Path, batch: int) -> None:
    """A real onnxruntime-genai export (their builder's graph, not ours renamed) passes the graph
    check, gets the shared buffer from generate() by default, and gives logits identical to the
    growing cache at every step."""
    from greenprof.models import runner

    model = load(genai_export_dir, threads=1)
    assert model.format == "genai"
    assert runner.shared_kv_blocker(model) is None
    sig = model.signature
    rng = np.random.default_rng(batch)
    n_prompt, n_new = 11, 24
    prompt = rng.integers(0, sig.vocab_size, (batch, n_prompt))
    forced = rng.integers(0, sig.vocab_size, (batch, n_new))
    a = _teacher_forced(runner._PlainStepper(model, batch, n_prompt + n_new), prompt, forced)
    b = _teacher_forced(runner._SharedStepper(model, batch, n_prompt + n_new), prompt, forced)
    assert len(a) == len(b) == n_new + 1
    for step, (x, y) in enumerate(zip(a, b)):
        assert x.shape == (batch, sig.vocab_size), step
        np.testing.assert_array_equal(x, y, err_msg=f"step {step}")
    auto = generate(model, prompt_tokens=n_prompt, new_tokens=n_new, batch=batch)
    plain = generate(model, prompt_tokens=n_prompt, new_tokens=n_new, batch=batch, shared_kv=False)
    assert auto.shared_kv is True and plain.shared_kv is False
    np.testing.assert_array_equal(auto.token_ids, plain.token_ids)


def test_shared_kv_arguments(tiny_dir: Path) -> None:
    model = load(tiny_dir, threads=1)
    with pytest.raises(merr.InvalidArgument, match="binds the KV buffers through IOBinding"):
        generate(model, prompt_tokens=3, new_tokens=2, shared_kv=True, io_binding=False)
    with pytest.raises(merr.InvalidArgument, match="shared_kv='yes'"):
        generate(model, prompt_tokens=3, new_tokens=2, shared_kv="yes")  # type: ignore[arg-type]
    # io_binding=False alone is an explicit request for plain session.run: honoured
    assert generate(model, prompt_tokens=3, new_tokens=2, io_binding=False).shared_kv is False
    assert generate(model, prompt_tokens=3, new_tokens=2, shared_kv=True).shared_kv is True


# --------------------------------------------------------------------------- tiny Llama (torch)

LLAMA = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 256, "intermediate": 128}


def _export_llama(hf_model: Any, path: Path, *, position_ids: bool) -> None:
    """Export a transformers Llama to the optimum signature with torch.onnx (TorchScript).

    The wrapper takes flat past tensors and returns logits + flat presents so the ONNX names
    are exactly past_key_values.{i}.key/value -> present.{i}.key/value. Without position_ids
    (the genai layout) transformers derives positions from the past length.
    """
    import torch
    from transformers import DynamicCache

    layers = hf_model.config.num_hidden_layers

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(self, input_ids: Any, attention_mask: Any, *rest: Any) -> tuple[Any, ...]:
            pos, past = (rest[0], rest[1:]) if position_ids else (None, rest)
            cache = DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)], config=self.model.config
            )
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, past_key_values=cache, use_cache=True
            )
            presents: list[Any] = []
            for layer in out.past_key_values.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    batch, seq, past_len = 2, 3, 4
    head_dim = LLAMA["hidden"] // LLAMA["heads"]
    args: list[Any] = [torch.randint(0, LLAMA["vocab"], (batch, seq)), torch.ones(batch, past_len + seq, dtype=torch.int64)]
    names = ["input_ids", "attention_mask"]
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    if position_ids:
        args.append(torch.arange(past_len, past_len + seq).expand(batch, seq))
        names.append("position_ids")
        dynamic["position_ids"] = {0: "batch_size", 1: "sequence_length"}
    outputs = ["logits"]
    for i in range(layers):
        for kind in ("key", "value"):
            args.append(torch.randn(batch, LLAMA["kv_heads"], past_len, head_dim))
            names.append(f"past_key_values.{i}.{kind}")
            outputs.append(f"present.{i}.{kind}")
            dynamic[names[-1]] = {0: "batch_size", 2: "past_sequence_length"}
            dynamic[outputs[-1]] = {0: "batch_size", 2: "total_sequence_length"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            Wrapper().eval(),
            tuple(args),
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the TorchScript exporter's tracer and deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass
class LlamaExports:
    hf: Any
    optimum: Path
    genai: Path
    tokenizer: Path


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> LlamaExports:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the export wrapper uses the transformers 5 cache API (DynamicCache.layers)")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=LLAMA["hidden"],
        intermediate_size=LLAMA["intermediate"],
        num_hidden_layers=LLAMA["layers"],
        num_attention_heads=LLAMA["heads"],
        num_key_value_heads=LLAMA["kv_heads"],
        vocab_size=LLAMA["vocab"],
        max_position_embeddings=512,
        attn_implementation="eager",  # traceable; sdpa masks do not trace into ONNX as cleanly
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("llama")
    _export_llama(hf, root / "optimum" / "model.onnx", position_ids=True)
    config.to_json_file(str(root / "optimum" / "config.json"))
    _export_llama(hf, root / "genai" / "model.onnx", position_ids=False)
    genai_config(
        root / "genai", "model.onnx", layers=LLAMA["layers"], kv_heads=LLAMA["kv_heads"],
        head_dim=LLAMA["hidden"] // LLAMA["heads"], vocab=LLAMA["vocab"], eos=2, context_length=512,
    )
    tok = byte_tokenizer(root / "optimum" / "tokenizer.json")
    (root / "genai" / "tokenizer.json").write_bytes(tok.read_bytes())
    return LlamaExports(hf=hf, optimum=root / "optimum", genai=root / "genai", tokenizer=tok)


def hf_greedy(hf: Any, prompt_ids: np.ndarray, n: int) -> np.ndarray:
    """transformers' own greedy generation of exactly n tokens (EOS ignored)."""
    import torch

    ids = torch.from_numpy(prompt_ids.astype(np.int64))
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, prompt_ids.shape[1] :].numpy()


@pytest.mark.parametrize("io_binding", [True, False])
def test_llama_greedy_matches_transformers(llama: LlamaExports, io_binding: bool) -> None:
    model = load(llama.optimum, threads=1)
    assert model.format == "optimum"
    sig = model.signature
    assert (sig.num_layers, sig.num_kv_heads, sig.head_dim, sig.kv_dtype) == (2, 2, 16, np.float32)
    assert sig.supports_batch and sig.vocab_size == 256
    gen = generate(model, prompt_tokens=11, new_tokens=24, batch=2, seed=7, io_binding=io_binding)
    np.testing.assert_array_equal(gen.token_ids, hf_greedy(llama.hf, gen.prompt_ids, 24))


def test_llama_text_prompt_matches_transformers(llama: LlamaExports) -> None:
    model = load(llama.optimum)
    gen = generate(model, prompt="energy per token", new_tokens=10)
    np.testing.assert_array_equal(gen.token_ids, hf_greedy(llama.hf, gen.prompt_ids, 10))
    assert gen.text == model.tokenizer.decode(gen.token_ids[0].tolist())


def test_llama_genai_folder_matches_transformers(llama: LlamaExports) -> None:
    model = load(llama.genai)
    assert model.format == "genai" and model.signature.position_ids is None
    assert model.eos_token_ids == (2,) and model.context_length == 512
    meter = FakeMeter()
    gen = generate(model, prompt_tokens=9, new_tokens=16, meter=meter)
    np.testing.assert_array_equal(gen.token_ids, hf_greedy(llama.hf, gen.prompt_ids, 16))
    assert meter.labels == ["setup", "prefill"] + [f"token-{i}" for i in range(1, 17)]


# --------------------------------------------------------------------------- attribution


@dataclass
class Seg:
    label: str
    duration_s: float
    energy_j: dict[str, float]
    dynamic_energy_j: dict[str, float] | None = None


@dataclass
class Meas:
    segments: list[Seg]
    resolution_s: dict[str, float | None] | None = None


def fake_measurement(dynamic: bool = True) -> Meas:
    segs = [Seg("prefill", 0.2, {"cpu": 10.0, "gpu:0": 20.0}, {"cpu": 4.0, "gpu:0": 12.0} if dynamic else None)]
    for i, cpu in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        segs.append(Seg(f"token-{i}", 0.05, {"cpu": cpu, "gpu:0": 5.0}, {"cpu": 0.5, "gpu:0": 2.0} if dynamic else None))
    segs.append(Seg("run", 0.4, {"cpu": 20.0, "gpu:0": 40.0}))  # other labels are ignored
    return Meas(segs)


def test_attribution_math() -> None:
    a = attribute(fake_measurement(), prompt_tokens=10, new_tokens=4)
    assert a.prefill_energy_j == {"cpu": 10.0, "gpu:0": 20.0}
    assert a.decode_energy_j == {"cpu": 10.0, "gpu:0": 20.0}
    assert a.prefill_j_per_prompt_token == pytest.approx({"cpu": 1.0, "gpu:0": 2.0})
    assert a.decode_j_per_token == pytest.approx({"cpu": 2.5, "gpu:0": 5.0})
    assert a.prefill_dynamic_j_per_prompt_token == pytest.approx({"cpu": 0.4, "gpu:0": 1.2})
    assert a.decode_dynamic_j_per_token == pytest.approx({"cpu": 0.5, "gpu:0": 2.0})
    assert a.per_token_j["cpu"] == [1.0, 2.0, 3.0, 4.0]
    assert a.prefill_duration_s == pytest.approx(0.2) and a.decode_duration_s == pytest.approx(0.2)
    assert a.prefill_tokens_per_s == pytest.approx(50.0) and a.decode_tokens_per_s == pytest.approx(20.0)
    assert a.window_averaged == [] and a.notes == []


def test_attribution_batch_divides_by_rows() -> None:
    a = attribute(fake_measurement(), prompt_tokens=10, new_tokens=4, batch=2)
    assert a.prefill_j_per_prompt_token == pytest.approx({"cpu": 0.5, "gpu:0": 1.0})
    assert a.decode_j_per_token == pytest.approx({"cpu": 1.25, "gpu:0": 2.5})
    assert a.per_token_j["cpu"] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert a.decode_tokens_per_s == pytest.approx(40.0)


def test_attribution_coarse_domain_uses_the_decode_window() -> None:
    a = attribute(fake_measurement(), prompt_tokens=10, new_tokens=4, resolution_s={"gpu:0": 0.1, "cpu": 0.001})
    assert a.window_averaged == ["gpu:0"]
    assert a.per_token_j["gpu:0"] == pytest.approx([5.0] * 4)
    assert a.per_token_j["cpu"] == [1.0, 2.0, 3.0, 4.0]  # resolves single tokens: kept as measured
    assert a.decode_j_per_token["gpu:0"] == pytest.approx(5.0)  # the mean is the same either way
    assert any("gpu:0" in n and "decode window" in n and "divided by 4 tokens" in n for n in a.notes)
    assert not any(n.startswith("cpu") for n in a.notes)


def test_attribution_takes_resolution_from_the_measurement() -> None:
    m = fake_measurement()
    m.resolution_s = {"gpu:0": 0.1, "cpu": None}
    assert attribute(m, prompt_tokens=10, new_tokens=4).window_averaged == ["gpu:0"]
    assert attribute(m, prompt_tokens=10, new_tokens=4, resolution_s={}).window_averaged == []


def test_attribution_without_dynamic_energy() -> None:
    a = attribute(fake_measurement(dynamic=False), prompt_tokens=10, new_tokens=4)
    assert a.decode_dynamic_j_per_token == {} and a.prefill_dynamic_j_per_prompt_token == {}
    assert a.decode_j_per_token == pytest.approx({"cpu": 2.5, "gpu:0": 5.0})


def test_attribution_errors() -> None:
    m = fake_measurement()
    with pytest.raises(merr.AttributionError, match="4 token-i segments but new_tokens=5"):
        attribute(m, prompt_tokens=10, new_tokens=5)
    with pytest.raises(merr.AttributionError, match="0 'prefill' segments"):
        attribute(Meas([s for s in m.segments if s.label != "prefill"]), prompt_tokens=10, new_tokens=4)
    with pytest.raises(merr.AttributionError, match="prompt_tokens=0"):
        attribute(m, prompt_tokens=0, new_tokens=4)


def test_attribution_of_a_real_generation(toy: LoadedModel) -> None:
    """generate()'s marks are exactly the segments attribute() expects."""

    class EnergyMeter(FakeMeter):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.perf_counter()

        def measurement_from_marks(self) -> Meas:
            segs = []
            for (label, t1), t0 in zip(zip(self.labels, self.times), [self.t0, *self.times]):
                segs.append(Seg(label, t1 - t0, {"cpu-estimate": 15.0 * (t1 - t0)}))  # 15 W
            return Meas(segs)

    meter = EnergyMeter()
    gen = generate(toy, prompt_tokens=6, new_tokens=10, meter=meter)
    a = attribute(meter.measurement_from_marks(), gen.prompt_tokens, gen.new_tokens)
    assert a.decode_j_per_token["cpu-estimate"] == pytest.approx(15.0 * a.decode_duration_s / 10)
    assert len(a.per_token_j["cpu-estimate"]) == 10


def test_with_the_real_meter(tmp_path: Path) -> None:
    """greenprof.Meter + a 10 W counter: marks become segments that attribute() splits."""
    from greenprof import Meter
    from greenprof.collectors.base import CounterCollector

    class TenWatts(CounterCollector):
        domain, method, source = "cpu-test", "replayed", "test"
        scope = "process"  # a synthetic counter of this process's own energy: not apportioned

        def __init__(self) -> None:
            self._t0 = time.perf_counter()

        def read_j(self) -> float:
            return 10.0 * (time.perf_counter() - self._t0)

    with Meter(collectors=[TenWatts()], sample_hz=0) as meter:
        model = load(toy_decoder(tmp_path / "model.onnx"))  # setup: kept out of "prefill"
        gen = generate(model, prompt_tokens=8, new_tokens=12, meter=meter)
    assert gen.measurement is None  # generate() ran inside the block
    m = meter.measurement
    labels = [s.label for s in m.segments]
    assert labels[:3] == ["setup", "prefill", "token-1"] and "token-12" in labels
    a = attribute(m, gen.prompt_tokens, gen.new_tokens)
    assert a.decode_j_per_token["cpu-test"] == pytest.approx(10.0 * a.decode_duration_s / 12, rel=1e-2)  # clock vs counter read
    assert a.prefill_duration_s == pytest.approx(gen.prefill_duration_s, abs=2e-3)
    assert a.decode_duration_s == pytest.approx(gen.decode_duration_s, abs=2e-3)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706204736174703),
        (0.975, 2, 4.302652729749464),
        (0.975, 4, 2.7764451051977987),
        (0.975, 10, 2.2281388519862744),
        (0.975, 30, 2.0422724563012373),
        (0.975, 1000, 1.9623390808264078),
        (0.995, 3, 5.840909309733355),
        (0.9, 1, 3.077683537175253),
        (0.025, 5, -2.5705818356363155),
        (0.5, 7, 0.0),
    ],
)
def test_t_quantile_exact(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_t_quantile_approaches_normal() -> None:
    assert t_quantile(0.975, 10**7) == pytest.approx(1.959963984540054, rel=1e-6)


def test_interval95_positive_values_never_go_below_zero() -> None:
    # two runs far apart: a Student-t interval would be [-0.0011, 0.0018]
    iv = interval95([0.0001, 0.0006])
    assert iv.mean == pytest.approx(0.00035) and iv.lo > 0 and iv.hi > iv.mean
    assert iv.method == "lognormal-cox"
    iv = interval95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 0 < iv.lo < 3.0 < iv.hi
    same = interval95([2.0, 2.0, 2.0])
    assert same.mean == 2.0 and same.lo == pytest.approx(2.0) and same.hi == pytest.approx(2.0)


def test_interval95_one_run_has_no_interval_and_signed_values_use_student_t() -> None:
    one = interval95([4.2])
    assert one.mean == 4.2 and one.lo is None and one.hi is None and one.as_list() is None
    signed = interval95([-1.0, 1.0, 3.0])
    half = 4.302652729749464 * 2.0 / math.sqrt(3)
    assert signed.method == "student-t" and signed.lo == pytest.approx(1.0 - half)
    with pytest.raises(UsageError):
        interval95([])


def test_generate_marks_tokens_with_the_meters_token_marker(toy: LoadedModel) -> None:
    """A meter that offers token_marker() gets its token marks through it (greenprof.Meter
    with token_segments=False: a count, no reading); the other marks still go to mark()."""
    from greenprof.meter import Meter

    seen: list[str] = []
    meter = Meter(collectors="cpu-estimate", sample_hz=0, token_segments=False)
    real_mark = meter.mark

    def mark(label: str) -> None:
        seen.append(label)
        real_mark(label)

    meter.mark = mark  # type: ignore[method-assign]
    with meter:
        g = generate(toy, prompt_tokens=4, new_tokens=6, meter=meter)
    assert seen == ["setup", "prefill"] and g.new_tokens == 6
    decode = [s for s in meter.measurement.segments if s.label == "decode"]
    assert sum(s.tokens for s in decode) == 6
