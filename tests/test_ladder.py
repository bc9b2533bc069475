"""`greenprof ladder`: the J/token vs size fit (accounting.fit_power_law / predict), the seed
shapes extrapolated, GPT-4o mini beside them (EcoLogits when installed, the price alone when not),
and the command end to end on real measurements.

The fit is checked on synthetic points with known exponents, against an independent numpy least
squares and for the coverage of its 95 % interval. The command measures the built-in `tiny`,
`smollm-135m` and `smollm-360m` shapes with real onnxruntime and the machine's own energy sources
(short runs: 8-token prompt, 4 new tokens, 2 runs), into a SQLite store in tmp_path.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import typer
from typer.testing import CliRunner

from greenprof import accounting, ladder
from greenprof.errors import GreenprofError, UsageError

np = pytest.importorskip("numpy")


# -- the fit on synthetic points ----------------------------------------------------------------------
SIZES = [1.35e8, 3.6e8, 1.7e9, 3.8e9, 6.7e9]


def test_exact_power_law_is_recovered():
    a, b = 2.5e-9, 0.93
    fit = accounting.fit_power_law(SIZES, [a * p ** b for p in SIZES])
    assert fit.exponent == pytest.approx(b, abs=1e-12)
    assert fit.coefficient == pytest.approx(a, rel=1e-9)
    assert fit.points == 5 and fit.df == 3
    lo, hi = fit.exponent_ci95
    assert lo == pytest.approx(b, abs=1e-9) and hi == pytest.approx(b, abs=1e-9)  # no scatter
    assert fit.r2 == pytest.approx(1.0)
    pr = accounting.predict(fit, 41.3e9)
    assert pr.j_per_token == pytest.approx(a * 41.3e9 ** b, rel=1e-9)
    assert pr.extrapolated and not accounting.predict(fit, 1e9).extrapolated


@pytest.mark.parametrize("b", [0.5, 1.0, 1.2])
def test_noisy_fit_matches_numpy_least_squares(b):
    """Exponent, its interval and the prediction interval, recomputed independently with numpy's
    least squares and the textbook formulas (t quantile from accounting.t_quantile, which
    test_measure checks against tabulated values)."""
    rng = np.random.default_rng(7)
    x = np.array(SIZES)
    y = 3e-9 * x ** b * np.exp(rng.normal(0, 0.08, x.size))
    fit = accounting.fit_power_law(list(x), list(y))
    X = np.column_stack([np.ones(x.size), np.log(x)])
    beta, sse, *_ = np.linalg.lstsq(X, np.log(y), rcond=None)
    s2 = float(sse[0]) / (x.size - 2)
    cov = s2 * np.linalg.inv(X.T @ X)
    t = accounting.t_quantile(0.975, x.size - 2)
    assert fit.exponent == pytest.approx(beta[1], rel=1e-9)
    assert fit.log_coefficient == pytest.approx(beta[0], rel=1e-9)
    half = t * math.sqrt(cov[1, 1])
    assert fit.exponent_ci95 == pytest.approx((beta[1] - half, beta[1] + half), rel=1e-9)
    x0 = np.array([1.0, math.log(12.2e9)])
    se_pred = math.sqrt(s2 + x0 @ cov @ x0)
    pr = accounting.predict(fit, 12.2e9)
    centre = float(x0 @ beta)
    assert pr.j_per_token == pytest.approx(math.exp(centre), rel=1e-9)
    assert pr.j_per_token_ci95 == pytest.approx((math.exp(centre - t * se_pred), math.exp(centre + t * se_pred)),
                                                rel=1e-9)


def test_exponent_interval_covers_the_true_exponent_95_percent_of_the_time():
    """2,000 seeded synthetic ladders of 4 sizes with log-normal scatter: the interval holds the
    true exponent in about 95 % of them (binomial 99.9 % range for n = 2000: 93.4-96.5 %)."""
    rng = np.random.default_rng(11)
    x = np.array(SIZES[:4])
    hits = 0
    for _ in range(2000):
        y = 1e-9 * x ** 0.9 * np.exp(rng.normal(0, 0.15, x.size))
        lo, hi = accounting.fit_power_law(list(x), list(y)).exponent_ci95
        hits += lo <= 0.9 <= hi
    assert 0.934 <= hits / 2000 <= 0.965, hits


def test_two_sizes_give_the_line_through_both_and_no_interval():
    fit = accounting.fit_power_law([1e8, 1e9], [0.1, 0.8])
    assert fit.exponent == pytest.approx(math.log10(8))
    assert fit.exponent_ci95 is None and fit.residual_sd is None and fit.r2 is None
    pr = accounting.predict(fit, 1e10)
    assert pr.j_per_token == pytest.approx(6.4) and pr.j_per_token_ci95 is None
    assert "two sizes" in ladder.fit_sentence(fit, "fp32", 2, "estimated energy (attributed)")


@pytest.mark.parametrize("params, j", [([1e8, 1e8, 1e8], [1, 2, 3]), ([1e8], [1.0]), ([1e8, 0], [1, 2]),
                                       ([1e8, 1e9], [1, -2]), ([1e8, 1e9], [1, math.nan]), ([1e8, 1e9], [1])])
def test_bad_points_are_refused(params, j):
    with pytest.raises(UsageError):
        accounting.fit_power_law(params, j)


def test_fit_sentence_reads_like_the_question():
    fit = accounting.fit_power_law(SIZES, [2e-9 * p ** 0.93 * f for p, f in zip(SIZES, (1.02, 0.97, 1.01, 1.0, 0.99))])
    text = ladder.fit_sentence(fit, "fp32", 5, "measured energy (attributed)")
    lo, hi = fit.exponent_ci95
    assert text.startswith(f"on this machine J/token grows as params^{fit.exponent:.2f} [{lo:.2f}, {hi:.2f}]")


# -- extrapolation of the seed shapes -------------------------------------------------------------------
def test_seed_shapes_are_extrapolated_and_a_measured_one_is_not():
    from greenprof.models import shapes

    fit = accounting.fit_power_law(SIZES[:3], [2e-9 * p ** 0.9 * f for p, f in zip(SIZES, (1.03, 0.96, 1.01))])
    rows, notes = ladder.extrapolate(fit, "fp32", ["smollm-135m", "phi-3-mini"], intensity_g_per_kwh=56.0,
                                     pue=1.2, price_usd_per_kwh=0.2)
    names = [r["model"] for r in rows]
    assert "phi-3-mini" not in names  # measured: the run replaces the prediction
    assert {"llama-2-7b", "mistral-nemo-12b"} <= set(names)
    for r in rows:
        assert r["origin"] == "extrapolated" and r["beyond_measured_sizes"]
        assert r["params"] == shapes.param_count(shapes.get_shape(r["model"])) or r["model"] == "falcon-40b"
        pr = accounting.predict(fit, r["params"])
        assert r["j_per_token"] == pr.j_per_token and r["j_per_token_ci95"] == pr.ci95_list()
        assert r["co2e_g_per_1k_tokens"] == accounting.co2e_g_per_1k_tokens(pr.j_per_token, 56.0, 1.2)
        assert r["usd_per_m_tokens"] == accounting.usd_per_m_tokens(pr.j_per_token, 0.2, 1.2)
    if "falcon-40b" in shapes.known_names():
        assert "falcon-40b" in names and not notes
        falcon = next(r for r in rows if r["model"] == "falcon-40b")
        assert abs(falcon["params"] / 41.3e9 - 1) < 0.01
    else:
        assert notes == ["falcon-40b: not among this greenprof's built-in shapes, so not extrapolated"]


def test_a_seed_shape_this_greenprof_lacks_is_named_not_guessed(monkeypatch):
    from greenprof.models import shapes

    monkeypatch.setattr(shapes, "SHAPES", {k: v for k, v in shapes.SHAPES.items() if k != "llama-2-7b"})
    fit = accounting.fit_power_law([1e8, 1e9], [0.1, 0.9])
    rows, notes = ladder.extrapolate(fit, "fp32", [], intensity_g_per_kwh=475.0, pue=1.0, price_usd_per_kwh=0.1)
    assert "llama-2-7b" not in [r["model"] for r in rows]
    assert "llama-2-7b: not among this greenprof's built-in shapes, so not extrapolated" in notes


def test_default_ladder_follows_free_memory():
    from greenprof.models import builder

    need = {n: builder.planned_bytes(n, "fp32") for n in ladder.SMOLLM_LADDER}
    chosen, notes = ladder.default_models("fp32", available_bytes=int(need["smollm-360m"] * 1.6))
    assert chosen == ["smollm-135m", "smollm-360m"]
    assert len(notes) == 1 and notes[0].startswith("smollm-1.7b fp32 left out of the default ladder")
    assert ladder.default_models("fp32", available_bytes=10 ** 12)[0] == list(ladder.SMOLLM_LADDER)


# -- API references: EcoLogits installed, and not -----------------------------------------------------
def test_gpt4o_mini_energy_comes_from_the_installed_ecologits():
    """The range is EcoLogits' own estimate for a 1,000-output-token request, computed at run time
    from its model repository (recomputed here by calling its impact function directly)."""
    pytest.importorskip("ecologits")
    from importlib import metadata

    from ecologits.electricity_mix_repository import electricity_mixes
    from ecologits.impacts.llm import compute_llm_impacts
    from ecologits.model_repository import models
    from ecologits.tracers.utils import PROVIDER_CONFIG_MAP

    refs, notes = ladder.api_references(56.0, "FRA")
    (ref,) = refs
    assert notes == []
    version = metadata.version("ecologits")
    m = models.find_model(provider="openai", model_name="gpt-4o-mini")
    mix = electricity_mixes.find_electricity_mix(zone="USA")  # its default zone for OpenAI
    cfg = PROVIDER_CONFIG_MAP["openai"]
    impacts = compute_llm_impacts(
        model_active_parameter_count=m.architecture.parameters, model_total_parameter_count=m.architecture.parameters,
        output_token_count=1000, request_latency=math.inf, if_electricity_mix_adpe=mix.adpe,
        if_electricity_mix_pe=mix.pe, if_electricity_mix_gwp=mix.gwp, if_electricity_mix_wue=mix.wue,
        datacenter_pue=cfg.datacenter_pue, datacenter_wue=cfg.datacenter_wue,
        tps=m.deployment.tps, ttft=m.deployment.ttft)
    kwh = impacts.energy.value
    lo, hi = ref["j_per_token_range"]
    assert lo == pytest.approx(kwh.min * 3.6e6 / 1000) and hi == pytest.approx(kwh.max * 3.6e6 / 1000)
    assert 0.1 < lo < hi < 1.0  # the order of EcoLogits' published ~0.23-0.32 J per output token
    assert ref["co2e_g_per_1k_tokens_range"] == [accounting.co2e_g_per_1k_tokens(v, 56.0, 1.0) for v in (lo, hi)]
    assert ref["usd_per_m_input_tokens"] == 0.15 and ref["usd_per_m_output_tokens"] == 0.60
    assert ref["estimator"] == f"EcoLogits {version}" and ref["method"] == "estimated"
    assert ref["source"].startswith(f"energy estimated by EcoLogits {version} (its methodology: ")
    assert "PUE" in ref["source"] and "1,000-token request" in ref["source"]
    assert ref["params_range"] == [m.architecture.parameters.min * 1e9, m.architecture.parameters.max * 1e9]


def test_without_the_extra_the_price_stays_and_a_note_says_how(monkeypatch):
    for mod in [k for k in sys.modules if k == "ecologits" or k.startswith("ecologits.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "ecologits", None)  # import ecologits -> ImportError
    assert ladder.ecologits_estimate(ladder.API_MODELS[0]) is None
    refs, notes = ladder.api_references(475.0, "WORLD")
    (ref,) = refs
    assert ref["j_per_token_range"] is None and ref["co2e_g_per_1k_tokens_range"] is None
    assert ref["usd_per_m_output_tokens"] == 0.60 and ref["usd_per_m_input_tokens"] == 0.15
    assert notes == ["gpt-4o-mini: price only; for its energy and CO2e estimated by EcoLogits: "
                     "pip install 'greenprof[ecologits]'"]


# -- the command, end to end ----------------------------------------------------------------------------
def make_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    ladder.register(app)
    return app


APP = make_app()
FAST = ("--runs", "2", "--new-tokens", "4", "--prompt-tokens", "8", "--warmup", "1", "--region", "FRA")


def cli(*args: str) -> tuple[int, str, str]:
    """Invoke like greenprof.cli.main: a GreenprofError is one line on stderr and its exit code."""
    r = CliRunner().invoke(APP, ["ladder", *args], env={"GREENPROF_DB": None, "GREENPROF_REGION": None})
    code, stderr = r.exit_code, r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        if not isinstance(r.exception, GreenprofError):
            raise r.exception
        stderr += f"greenprof: error: {r.exception}\n"
        code = r.exception.exit_code
    return code, r.stdout, stderr


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory):
    """One ladder over three sizes, as JSON, and its database."""
    db = tmp_path_factory.mktemp("ladder") / "ladder.db"
    code, out, err = cli("tiny", "smollm-135m", "smollm-360m", *FAST, "--db", str(db), "--json")
    assert code == 0, err
    return json.loads(out), db


def test_measured_rows_are_the_stored_runs_figures(ladder_run):
    from greenprof import carbon
    from greenprof.store import open_store

    doc, db = ladder_run
    measured = [m for m in doc["models"] if m["origin"] == "measured"]
    assert [m["model"] for m in measured] == ["tiny", "smollm-135m", "smollm-360m"]
    fra = carbon.lookup("FRA")
    with open_store(db) as store:
        runs = {r.id: r for r in store.list_runs(limit=None)}
    assert len(runs) == 6
    for m in measured:
        assert m["runs"] == 2 and not m["reused"] and m["precision"] == "fp32" and m["basis"] == "attributed"
        figs = [accounting.record_figures(runs[i], intensity_g_per_kwh=fra.intensity_g_per_kwh, pue=1.0,
                                          price_usd_per_kwh=doc["price_usd_per_kwh"]) for i in m["run_ids"]]
        iv = accounting.interval95([f.j_per_token for f in figs])
        assert m["j_per_token"] == pytest.approx(iv.mean) and m["j_per_token_ci95"] == pytest.approx(iv.as_list())
        assert m["co2e_g_per_1k_tokens"] == pytest.approx(
            accounting.co2e_g_per_1k_tokens(iv.mean, fra.intensity_g_per_kwh, 1.0))
        assert m["params"] == runs[m["run_ids"][0]].param_count > 0
        assert m["tokens_per_s"] > 0


def test_fit_and_extrapolations_come_from_accounting(ladder_run):
    doc, _ = ladder_run
    measured = [m for m in doc["models"] if m["origin"] == "measured"]
    fit = accounting.fit_power_law([m["params"] for m in measured], [m["j_per_token"] for m in measured])
    f = doc["fit"]
    assert doc["fits"] == [f] and f["precision"] == "fp32" and f["points"] == 3
    assert f["exponent"] == pytest.approx(fit.exponent)
    assert f["exponent_ci95"] == pytest.approx(list(fit.exponent_ci95))
    assert f["exponent_ci95"][0] < f["exponent"] < f["exponent_ci95"][1]
    assert f["sentence"].startswith(f"on this machine J/token grows as params^{fit.exponent:.2f} [")
    extra = [m for m in doc["models"] if m["origin"] == "extrapolated"]
    assert {"phi-3-mini", "llama-2-7b", "mistral-nemo-12b"} <= {m["model"] for m in extra}
    assert not {m["model"] for m in extra} & {m["model"] for m in measured}  # never mixed
    for m in extra:
        pr = accounting.predict(fit, m["params"])
        assert m["j_per_token"] == pytest.approx(pr.j_per_token)
        assert m["j_per_token_ci95"] == pytest.approx(pr.ci95_list())
        assert m["j_per_token_ci95"][0] < m["j_per_token"] < m["j_per_token_ci95"][1]
        assert "run_ids" not in m


def test_comparison_is_smallest_vs_largest_measured(ladder_run):
    doc, _ = ladder_run
    (c,) = doc["comparison"]
    by = {m["model"]: m for m in doc["models"] if m["origin"] == "measured"}
    assert c["smallest"]["model"] == "tiny" and c["largest"]["model"] == "smollm-360m"
    assert c["energy_ratio"] == pytest.approx(by["smollm-360m"]["j_per_token"] / by["tiny"]["j_per_token"])
    assert c["usd_ratio"] == pytest.approx(c["energy_ratio"]) and c["co2e_ratio"] == pytest.approx(c["energy_ratio"])
    assert c["speed_ratio"] == pytest.approx(by["smollm-360m"]["tokens_per_s"] / by["tiny"]["tokens_per_s"])
    assert f"{c['energy_ratio']:.3g}x the energy" in c["sentence"]


def test_references_sit_beside_never_among_measured(ladder_run):
    doc, _ = ladder_run
    (ref,) = doc["references"]
    assert ref["model"] == "gpt-4o-mini" and ref["provider"] == "openai"
    assert ref["usd_per_m_output_tokens"] == 0.60 and ref["usd_per_m_input_tokens"] == 0.15
    assert "gpt-4o-mini" not in [m["model"] for m in doc["models"]]
    assert set(ref) >= {"j_per_token_range", "co2e_g_per_1k_tokens_range", "source"}


def test_second_run_reuses_stored_runs_and_fresh_measures_again(ladder_run, tmp_path):
    from greenprof.store import open_store

    doc, db = ladder_run
    ids = {m["model"]: m["run_ids"] for m in doc["models"] if m["origin"] == "measured"}
    code, out, err = cli("tiny", "smollm-135m", "smollm-360m", *FAST, "--db", str(db), "--json")
    assert code == 0, err
    again = json.loads(out)
    for m in [m for m in again["models"] if m["origin"] == "measured"]:
        assert m["reused"] and m["run_ids"] == ids[m["model"]]
    assert again["fit"]["exponent"] == pytest.approx(doc["fit"]["exponent"])
    assert "reusing runs" in err
    # other settings (more tokens) or --fresh: measured anew
    code, out, err = cli("tiny", *FAST[:2], "--new-tokens", "5", *FAST[4:], "--db", str(db), "--json")
    assert code == 0, err
    (m,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    assert not m["reused"] and not set(m["run_ids"]) & set(ids["tiny"])
    code, out, err = cli("tiny", *FAST, "--db", str(db), "--json", "--fresh")
    assert code == 0, err
    (m,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    assert not m["reused"] and not set(m["run_ids"]) & set(ids["tiny"])
    with open_store(db) as store:
        assert len(store.list_runs(limit=None)) == 6 + 2 + 2


def test_table_output_says_the_answer(ladder_run):
    _, db = ladder_run
    code, out, err = cli("tiny", "smollm-135m", "smollm-360m", *FAST, "--db", str(db))
    assert code == 0, err
    assert "Measured on this machine" in out and "(reused)" in out
    assert "on this machine J/token grows as params^" in out
    assert "Extrapolated from the fit (not measured" in out and "llama-2-7b" in out
    assert "gpt-4o-mini" in out and "0.60" in out
    assert "Measured here (fp32): tiny" in out
    assert "reusing runs" in err and "reusing" not in out  # progress on stderr, data on stdout


@pytest.mark.parametrize("args, needle", [
    (("tiny", "--precision", "fp16"), "--precision"),
    (("tiny", "--runs", "0"), "--runs"),
    (("no-such-model",), "unknown model 'no-such-model'"),
    (("tiny", "--region", "Atlantis"), "Atlantis"),
])
def test_user_mistakes_exit_2_with_one_line_and_leave_no_database(tmp_path, args, needle):
    db = tmp_path / "untouched.db"
    code, out, err = cli(*args, "--db", str(db))
    assert code == 2, err
    assert out == "" and needle in err and len(err.strip().splitlines()) == 1
    assert not db.exists()


def test_runs_of_another_model_file_are_not_reused(tmp_path):
    """A stored run whose model file hash is not the built model's (an older builder, say) is
    measured again, not averaged with the model the ladder would run now."""
    from sqlalchemy import update

    from greenprof.store import open_store
    from greenprof.store import schema as S

    db = tmp_path / "hash.db"
    code, out, err = cli("tiny", *FAST, "--db", str(db), "--json")
    assert code == 0, err
    (first,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    with open_store(db) as store:
        with store.engine.begin() as conn:
            conn.execute(update(S.runs).values(model_file_hash="0" * 64))
    code, out, err = cli("tiny", *FAST, "--db", str(db), "--json")
    assert code == 0, err
    (again,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    assert not again["reused"] and not set(again["run_ids"]) & set(first["run_ids"])


def test_without_models_the_default_ladder_is_measured(tmp_path, monkeypatch):
    """No MODEL: the default ladder's shapes that fit in memory (here a two-shape ladder, so the
    test stays short), with a note for one that does not fit."""
    from greenprof.models import builder

    monkeypatch.setattr(ladder, "SMOLLM_LADDER", ("tiny", "smollm-135m", "smollm-1.7b"))
    avail = int(builder.planned_bytes("smollm-135m", "fp32") * ladder.MEMORY_HEADROOM * 1.1)
    monkeypatch.setattr(ladder, "available_memory_bytes", lambda: avail)
    code, out, err = cli(*FAST, "--db", str(tmp_path / "d.db"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [m["model"] for m in doc["models"] if m["origin"] == "measured"] == ["tiny", "smollm-135m"]
    assert any(n.startswith("smollm-1.7b fp32 left out of the default ladder") for n in doc["notes"])
    (big,) = [m for m in doc["models"] if m["model"] == "smollm-1.7b"]  # extrapolated instead
    assert big["origin"] == "extrapolated" and big["params"] == ladder.shape_params("smollm-1.7b")


def test_runs_with_another_warm_up_are_not_reused(tmp_path):
    """A run made with a different number of warm-up passes is another measurement: measured
    again, so the JSON's settings.warmup is the warm-up of every run it averages."""
    db = tmp_path / "warm.db"
    code, out, err = cli("tiny", *FAST, "--db", str(db), "--json")
    assert code == 0, err
    (first,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    warm = json.loads(out)["settings"]["warmup"]
    code, out, err = cli("tiny", *FAST, "--warmup", str(warm + 1), "--db", str(db), "--json")
    assert code == 0, err
    (again,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    assert not again["reused"] and not set(again["run_ids"]) & set(first["run_ids"])
    code, out, err = cli("tiny", *FAST, "--warmup", str(warm + 1), "--db", str(db), "--json")
    (third,) = [m for m in json.loads(out)["models"] if m["origin"] == "measured"]
    assert third["reused"] and third["run_ids"] == again["run_ids"]
