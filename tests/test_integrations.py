"""greenprof.integrations.transformers: Hugging Face `generate` measured per token by EnergyStreamer.

A small random transformers LlamaForCausalLM on torch CPU; the CPU package is a fake powercap zone
moved at a known power by a separate process (the hardware boundary), so the run's energy is
checked against power x time. Every figure comes from greenprof.accounting.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from greenprof import accounting
from greenprof.errors import UsageError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from greenprof.integrations.transformers import EnergyStreamer  # noqa: E402

POWER_W = 20.0


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=320,
                                      max_position_embeddings=512, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture()
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake RAPL package (no DRAM zone) whose counter moves at POWER_W."""
    from powercap_fake import CounterWriter, build

    pc = build(tmp_path / "pc", sockets=1, dram=False)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    with CounterWriter(pc.zone("intel-rapl:0"), POWER_W) as writer:
        yield writer


class Recorder:
    """The user's own streamer: records what generate hands it."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[Any] = []
        self.fail_at = fail_at

    def put(self, value: Any) -> None:
        self.calls.append(tuple(value.shape))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("the user's streamer failed")

    def end(self) -> None:
        self.calls.append("end")


def generate(model: Any, streamer: Any, *, batch: int = 2, prompt: int = 5, new: int = 8) -> Any:
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0, streamer=streamer)


def test_generate_has_a_prefill_segment_and_one_segment_per_token(llama: Any, package: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "hf.db")
    mine = Recorder()
    s = EnergyStreamer(llama, streamer=mine, db=db, region="FRA")
    out = generate(llama, s, batch=2, prompt=5, new=8)
    assert out.shape == (2, 13)

    m = s.measurement
    labels = [seg.label for seg in m.segments]
    assert labels.count("prefill") == 1 and labels.index("prefill") == 0
    assert [lb for lb in labels if lb.startswith("token-")] == [f"token-{i}" for i in range(1, 9)]
    assert (s.prompt_tokens, s.new_tokens, s.batch, s.status) == (5, 8, 2, "completed")
    # the user's streamer saw everything generate handed over
    assert mine.calls == [(2, 5)] + [(2,)] * 8 + ["end"]
    # the CPU model is charged the CPU domain of the machine (the fake package), measured
    assert list(m.energy_j) == ["cpu-package-0"] and m.method == {"cpu-package-0": "measured"}
    assert m.energy_j["cpu-package-0"] == pytest.approx(POWER_W * m.duration_s, rel=0.1)

    # figures: greenprof.accounting on the measurement, the same as from the stored run
    att = accounting.attribute(m, 5, 8, batch=2)
    assert s.attribution.j_per_token == pytest.approx(att.j_per_token)
    assert s.j_per_token == pytest.approx(att.j_per_token) and s.j_per_token > 0
    assert len(s.attribution.per_token_j["cpu-package-0"]) == 8
    assert s.energy_j == pytest.approx(sum(s.figures.phase_energy_j.values()))
    assert s.co2e_g == pytest.approx(accounting.co2e_g(s.energy_j, s.grid.intensity_g_per_kwh, s.pue))

    from greenprof.store import open_store

    store = open_store(db)
    try:
        run = store.get_run(s.run_id)
        fig = accounting.record_figures(run, intensity_g_per_kwh=run.intensity_g_per_kwh, pue=run.pue,
                                        price_usd_per_kwh=run.price_usd_per_kwh)
    finally:
        store.close()
    assert fig.j_per_token == pytest.approx(s.j_per_token)
    assert fig.j_per_prompt_token == pytest.approx(s.j_per_prompt_token)
    with sqlite3.connect(db) as c:
        row = c.execute("select kind, status, model_name, param_count, precision, provider, prompt_tokens, "
                        "new_tokens, batch_size, region, extra from runs where id = ?", (s.run_id,)).fetchone()
        segs = c.execute("select label, kind, tokens from segments where run_id = ? order by idx",
                         (s.run_id,)).fetchall()
    assert row[:10] == ("track", "completed", "llama", llama.num_parameters(), "fp32", "torch:cpu", 5, 8, 2, "FRA")
    assert json.loads(row[10])["integration"] == "transformers.generate"
    assert segs[0] == ("prefill", "prefill", 10)
    assert [t for lb, k, t in segs if k == "decode"] == [2] * 8
    assert s.runs == [s.run_id]


def test_one_run_per_generate_and_composable_lists(llama: Any, package: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "hf.db")
    a, b = Recorder(), Recorder()
    s = EnergyStreamer(llama, streamer=[a, b], db=db, collectors=["cpu-package-0"])
    generate(llama, s, batch=1, prompt=3, new=4)
    first = s.run_id
    generate(llama, s, batch=1, prompt=6, new=2)
    assert s.runs == [first, s.run_id] and s.run_id != first
    assert (s.prompt_tokens, s.new_tokens) == (6, 2)
    assert a.calls == b.calls == [(1, 3)] + [(1,)] * 4 + ["end", (1, 6), (1,), (1,), "end"]
    with sqlite3.connect(db) as c:
        assert c.execute("select prompt_tokens, new_tokens, status from runs order by id").fetchall() == \
            [(3, 4, "completed"), (6, 2, "completed")]


def test_a_generate_inside_a_track_block_names_it_as_its_parent(llama: Any, package: Any, tmp_path: Path) -> None:
    import greenprof

    db = str(tmp_path / "hf.db")
    with greenprof.track(model="pipeline", db=db, collectors=["cpu-package-0"]) as t:
        s = EnergyStreamer(llama, db=db, collectors=["cpu-package-0"])
        generate(llama, s, batch=1, prompt=3, new=2)
    generate(llama, s, batch=1, prompt=3, new=2)  # outside the block: no parent
    with sqlite3.connect(db) as c:
        parents = dict(c.execute("select id, parent_run_id from runs").fetchall())
    assert parents == {t.run_id: None, s.runs[0]: t.run_id, s.runs[1]: None}


def test_a_generate_that_raises_is_stored_failed(llama: Any, package: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "hf.db")
    with pytest.raises(RuntimeError, match="the user's streamer failed"):
        with EnergyStreamer(llama, streamer=Recorder(fail_at=4), db=db) as s:
            generate(llama, s, new=8)
    assert not s.running and s.status == "failed"
    with sqlite3.connect(db) as c:
        status, error, new = c.execute("select status, error, new_tokens from runs").fetchone()
    assert status == "failed" and "RuntimeError: the user's streamer failed" in error and new == 3


def test_a_store_that_cannot_be_used_only_warns(llama: Any, package: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database folder should be")
    s = EnergyStreamer(llama, db=str(blocked / "x.db"), collectors=["cpu-package-0"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(llama, s, new=3)
    assert s.run_id is None and s.runs == [] and s.new_tokens == 3 and s.j_per_token > 0
    assert any("EnergyStreamer" in str(w.message) and "not stored" in str(w.message) for w in caught)
    assert any("not stored" in w for w in s.measurement.warnings)


def test_model_facts_and_overrides(llama: Any) -> None:
    from greenprof.integrations.transformers import describe_model

    info = describe_model(llama)
    assert (info["name"], info["params"], info["precision"], info["device"]) == \
        ("llama", llama.num_parameters(), "fp32", "cpu")
    assert llama.num_parameters() == sum(p.numel() for p in llama.parameters())  # tied head once
    half = describe_model(transformers.LlamaForCausalLM(llama.config).to(torch.bfloat16))
    assert half["precision"] == "bf16"
    s = EnergyStreamer(llama, model_name="my-llama", params=7, precision="int4", store=False)
    with pytest.raises(UsageError, match="figures are ready when generate"):
        s.j_per_token
    with pytest.raises(UsageError, match="streamer= takes a transformers streamer"):
        EnergyStreamer(llama, streamer=object())
    with pytest.raises(UsageError, match="params= takes a whole number"):
        EnergyStreamer(llama, params=1.5)


def test_overrides_reach_the_run(llama: Any, package: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "hf.db")
    s = EnergyStreamer(llama, model_name="my-llama", params=7, precision="int4", db=db)
    generate(llama, s, new=2)
    with sqlite3.connect(db) as c:
        assert c.execute("select model_name, param_count, precision from runs").fetchone() == ("my-llama", 7, "int4")


def test_importing_the_integration_is_cheap() -> None:
    code = ("import sys, greenprof.integrations.transformers;"
            "print('torch' in sys.modules, 'transformers' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
