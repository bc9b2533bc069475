import socket

import pytest

from greenprof import carbon
from greenprof.config import CLI_FLAGS, ENV_VARS, KEYS, load_settings, resolve_intensity
from greenprof.errors import ConfigError, UsageError


def write_pyproject(dir_, body):
    p = dir_ / "pyproject.toml"
    p.write_text(body, encoding="utf-8")
    return p


@pytest.fixture(autouse=True)
def _isolated(tmp_path):
    # an empty pyproject.toml stops the upward search inside tmp_path; tests overwrite it
    write_pyproject(tmp_path, "# no [tool.greenprof]\n")


@pytest.fixture()
def project(tmp_path):
    p = write_pyproject(tmp_path, """
[project]
name = "demo"

[tool.greenprof]
region = "FRA"
pue = 1.3
price_usd_per_kwh = 0.2
threads = 4
sample-hz = 5
db = "sqlite:///runs.db"
""")
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    return tmp_path, sub, p


def test_defaults(tmp_path):
    s = load_settings(cwd=tmp_path, env={})
    assert s.pue == 1.0 and s.region is None and s.intensity_g_per_kwh is None
    assert s.price_usd_per_kwh == carbon.DEFAULT_PRICE_USD_PER_KWH
    assert s.sample_hz == 10.0 and s.threads is None and s.db is None
    assert set(s.origin) == set(KEYS) and set(s.origin.values()) == {"default"}


def test_pyproject_found_from_subdirectory(project):
    root, sub, p = project
    s = load_settings(cwd=sub, env={})
    assert (s.region, s.pue, s.price_usd_per_kwh, s.threads, s.sample_hz, s.db) == \
        ("FRA", 1.3, 0.2, 4, 5.0, "sqlite:///runs.db")
    assert s.origin["region"] == f"pyproject.toml:{p.resolve()}"
    assert s.origin["sample_hz"].startswith("pyproject.toml:")
    assert s.origin["intensity_g_per_kwh"] == "default"
    assert s.pyproject == p.resolve()


def test_nearest_pyproject_wins_and_stops(project):
    root, sub, _ = project
    inner = write_pyproject(sub, "[project]\nname = 'inner'\n")  # no [tool.greenprof]
    s = load_settings(cwd=sub, env={})
    assert s.pyproject == inner.resolve()
    assert s.region is None and s.origin["region"] == "default"


def test_precedence_pyproject_env_flags(project):
    root, sub, _ = project
    env = {"GREENPROF_REGION": "DEU", "GREENPROF_PUE": "1.5", "GREENPROF_THREADS": "8"}
    s = load_settings(cwd=sub, env=env)
    assert (s.region, s.pue, s.threads, s.price_usd_per_kwh) == ("DEU", 1.5, 8, 0.2)
    assert s.origin["region"] == "env:GREENPROF_REGION"
    assert s.origin["pue"] == "env:GREENPROF_PUE"
    assert s.origin["price_usd_per_kwh"].startswith("pyproject.toml:")

    s = load_settings({"region": "SWE", "pue": None, "threads": 2}, cwd=sub, env=env)
    assert (s.region, s.pue, s.threads) == ("SWE", 1.5, 2)
    assert s.origin["region"] == "flag" and s.origin["threads"] == "flag"
    assert s.origin["pue"] == "env:GREENPROF_PUE"  # None = flag not given


def test_every_env_var(tmp_path):
    env = {"GREENPROF_DB": "x.db", "GREENPROF_REGION": "USA/CA", "GREENPROF_INTENSITY": "12.5",
           "GREENPROF_PUE": "1.1", "GREENPROF_PRICE_KWH": "0.3", "GREENPROF_THREADS": "3",
           "GREENPROF_SAMPLE_HZ": "0"}
    assert set(env) == set(ENV_VARS.values())
    s = load_settings(cwd=tmp_path, env=env)
    assert (s.db, s.region, s.intensity_g_per_kwh, s.pue, s.price_usd_per_kwh, s.threads,
            s.sample_hz) == ("x.db", "USA/CA", 12.5, 1.1, 0.3, 3, 0.0)
    assert all(s.origin[k] == f"env:{v}" for k, v in ENV_VARS.items())


def test_empty_env_var_is_unset(tmp_path):
    s = load_settings(cwd=tmp_path, env={"GREENPROF_PUE": "", "GREENPROF_REGION": "  "})
    assert s.pue == 1.0 and s.region is None and s.origin["pue"] == "default"


def test_real_environment_used_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENPROF_PUE", "1.4")
    assert load_settings(cwd=tmp_path).pue == 1.4


@pytest.mark.parametrize("var, value, words", [
    ("GREENPROF_PUE", "abc", "GREENPROF_PUE"),
    ("GREENPROF_PUE", "0.8", ">= 1"),
    ("GREENPROF_PUE", "-1", "GREENPROF_PUE"),
    ("GREENPROF_PUE", "nan", "finite"),
    ("GREENPROF_INTENSITY", "-5", "GREENPROF_INTENSITY"),
    ("GREENPROF_PRICE_KWH", "cheap", "GREENPROF_PRICE_KWH"),
    ("GREENPROF_THREADS", "2.5", "GREENPROF_THREADS"),
    ("GREENPROF_THREADS", "0", "GREENPROF_THREADS"),
    ("GREENPROF_SAMPLE_HZ", "-1", "GREENPROF_SAMPLE_HZ"),
])
def test_malformed_env(tmp_path, var, value, words):
    with pytest.raises(ConfigError, match=words) as ei:
        load_settings(cwd=tmp_path, env={var: value})
    assert "\n" not in str(ei.value) and ei.value.exit_code == 2


@pytest.mark.parametrize("line, words", [
    ("pue = 'high'", "pue"),
    ("pue = 0", "pue"),
    ("threads = true", "threads"),
    ("threads = 1.5", "threads"),
    ("region = 3", "region"),
    ("intensity_g_per_kwh = -1", "intensity_g_per_kwh"),
    ("colour = 'green'", "unknown key 'colour'"),
    ("regoin = 'FRA'", "did you mean region"),
])
def test_malformed_pyproject_value(tmp_path, line, words):
    p = write_pyproject(tmp_path, f"[tool.greenprof]\n{line}\n")
    with pytest.raises(ConfigError, match=words) as ei:
        load_settings(cwd=tmp_path, env={})
    msg = str(ei.value)
    assert str(p.resolve()) in msg and "\n" not in msg


def test_broken_pyproject_names_file(tmp_path):
    p = write_pyproject(tmp_path, "[tool.greenprof\nregion = 'FRA'\n")
    with pytest.raises(ConfigError, match="not valid TOML") as ei:
        load_settings(cwd=tmp_path, env={})
    assert str(p.resolve()) in str(ei.value)


def test_tool_greenprof_not_a_table(tmp_path):
    write_pyproject(tmp_path, "[tool]\ngreenprof = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        load_settings(cwd=tmp_path, env={})


def test_malformed_flag(tmp_path):
    with pytest.raises(ConfigError, match="pue"):
        load_settings({"pue": "x"}, cwd=tmp_path, env={})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({"colour": "green"}, cwd=tmp_path, env={})


# --------------------------------------------------------------------------- intensity


def test_resolve_world_average_with_note(tmp_path):
    g, note = resolve_intensity(load_settings(cwd=tmp_path, env={}))
    assert g.region == "WORLD" and g.intensity_g_per_kwh == 475
    assert note == ("no region set: using the world average (475 g/kWh); set one with "
                    "--region FRA, GREENPROF_REGION or [tool.greenprof] region")


def test_resolve_region(project):
    root, sub, _ = project
    g, note = resolve_intensity(load_settings(cwd=sub, env={}))
    assert g == carbon.lookup("FRA") and note is None


def test_explicit_intensity_wins_over_region_and_keeps_it(project):
    """The factor is the intensity; the region (FRA from pyproject.toml) is kept with the runs,
    and the note says the factor overrides it."""
    root, sub, _ = project
    s = load_settings({"intensity_g_per_kwh": 20}, cwd=sub, env={}, names=CLI_FLAGS)
    g, note = resolve_intensity(s)
    assert g.intensity_g_per_kwh == 20 and g.source.startswith("user (market-based factor")
    assert g.region == "FRA" and g.name == "France"
    fra = carbon.lookup("FRA").intensity_g_per_kwh
    assert note == (f"--intensity 20 g CO2e/kWh overrides the grid factor of France ({fra:g} g/kWh); "
                    "the region FRA is kept with the runs")
    # without a region the factor stands alone, as before
    s = load_settings({"intensity_g_per_kwh": 20}, cwd=sub, env={})
    s.region = None
    g, note = resolve_intensity(s)
    assert g.region == "USER" and note is None


def test_an_unknown_region_is_named_as_it_was_given(tmp_path):
    """The flag, the variable or the pyproject key: the user's own spelling, and --intensity is
    suggested only where the command has it."""
    s = load_settings({"region": "Narnia"}, cwd=tmp_path, env={}, names=CLI_FLAGS)
    with pytest.raises(carbon.UnknownRegion) as ei:
        resolve_intensity(s)
    assert str(ei.value).startswith("--region: unknown region 'Narnia'")
    assert str(ei.value).endswith("or give a factor with --intensity G")
    s = load_settings(cwd=tmp_path, env={"GREENPROF_REGION": "Narnia"}, names={"region": "--region"})
    with pytest.raises(carbon.UnknownRegion) as ei:
        resolve_intensity(s)
    assert str(ei.value).startswith("GREENPROF_REGION: unknown region 'Narnia'")
    assert "--intensity" not in str(ei.value)


@pytest.mark.parametrize("key, value, flag", [
    ("intensity_g_per_kwh", -3, "--intensity"), ("price_usd_per_kwh", -1, "--price-kwh"),
    ("threads", 0, "--threads"), ("pue", 0.5, "--pue"),
])
def test_bad_flags_are_named_as_typed(tmp_path, key, value, flag):
    with pytest.raises(ConfigError) as ei:
        load_settings({key: value}, cwd=tmp_path, env={}, names=CLI_FLAGS)
    msg = str(ei.value)
    assert msg.startswith(f"{flag}: ") and "option" not in msg and "\n" not in msg
    assert "_" not in msg.split(":")[0]  # never the internal field name (intensity_g_per_kwh)


def test_unknown_region_from_config(tmp_path):
    s = load_settings(cwd=tmp_path, env={"GREENPROF_REGION": "Narnia"})
    with pytest.raises(carbon.UnknownRegion) as ei:
        resolve_intensity(s)
    assert isinstance(ei.value, UsageError)


def test_no_network_while_resolving(project, monkeypatch):
    def guard(*a, **k):
        raise AssertionError("config opened a socket")

    monkeypatch.setattr(socket, "socket", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    root, sub, _ = project
    for env in ({}, {"GREENPROF_REGION": "US-CA"}, {"GREENPROF_INTENSITY": "5"}):
        resolve_intensity(load_settings(cwd=sub, env=env))
