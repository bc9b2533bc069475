import json
import math
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from greenprof import accounting, carbon
from greenprof.errors import GreenprofError, UsageError


def _cc_file(*parts):
    """CodeCarbon's package data, located independently of greenprof.carbon."""
    dist = metadata.distribution("codecarbon")
    p = Path(str(dist.locate_file("/".join(("codecarbon", "data", "private_infra", *parts)))))
    assert p.is_file(), f"CodeCarbon data file missing: {p}"
    return json.loads(p.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mix():
    return _cc_file("global_energy_mix.json")


@pytest.fixture(autouse=True)
def _fresh_caches():
    yield
    carbon._tables.cache_clear()
    carbon._pycountry_aliases.cache_clear()
    carbon.world_average.cache_clear()


# ------------------------------------------------------------------------------- countries


@pytest.mark.parametrize("iso3", ["FRA", "SWE", "GBR", "USA", "DEU", "CHN", "POL", "IND", "BRA", "JPN"])
def test_country_matches_codecarbon_json(mix, iso3):
    g = carbon.lookup(iso3)
    assert g.region == iso3
    assert g.intensity_g_per_kwh == mix[iso3]["carbon_intensity"]
    assert g.year == mix[iso3]["year"]
    assert g.name == mix[iso3]["country_name"]
    assert "global_energy_mix.json" in g.source and "Our World in Data" in g.source


# DESIGN.md "Reference facts": CodeCarbon's 2023 figures (g CO2e/kWh).
@pytest.mark.parametrize("iso3, design", [
    ("FRA", 56), ("SWE", 40.7), ("GBR", 237.6), ("USA", 369.5), ("DEU", 381),
    ("CHN", 582.3), ("POL", 661.9), ("IND", 713.4),
])
def test_design_examples_roughly(iso3, design):
    g = carbon.lookup(iso3)
    assert g.intensity_g_per_kwh == pytest.approx(design, abs=0.1)
    assert g.year == 2023


@pytest.mark.parametrize("spelling", ["FRA", "fra", "Fra", " FR ", "fr", "France", "FRANCE", "france"])
def test_country_spellings(spelling):
    assert carbon.lookup(spelling).region == "FRA"


@pytest.mark.parametrize("spelling, iso3", [
    ("GB", "GBR"), ("UK", "GBR"), ("United Kingdom", "GBR"), ("us", "USA"),
    ("United States", "USA"), ("de", "DEU"), ("Germany", "DEU"), ("Guinea-Bissau", "GNB"),
])
def test_iso2_and_names(spelling, iso3):
    assert carbon.lookup(spelling).region == iso3


def test_world_average_is_codecarbons():
    data = _cc_file("carbon_intensity_per_source.json")
    w = carbon.world_average()
    assert w.intensity_g_per_kwh == data["world_average"] == 475
    assert w.region == "WORLD" and "IEA" in w.source
    assert carbon.lookup("world") == w


# ---------------------------------------------------------------------------- sub-national


@pytest.mark.parametrize("spelling", ["USA/CA", "usa/ca", "US-CA", "us:ca", "USA/california",
                                      "United States/California", "usa / California"])
def test_us_state(spelling):
    usa = _cc_file("2023", "usa_emissions.json")
    assert usa["_unit"]["emissions"] == "lbs/MWh"
    g = carbon.lookup(spelling)
    assert g.region == "USA/CA"
    # 1 lb = 453.59237 g, 1 MWh = 1000 kWh
    assert g.intensity_g_per_kwh == pytest.approx(usa["california"]["emissions"] * 0.45359237)
    assert g.year == usa["_source"]["year"] == 2023
    assert "eGRID" in g.source and "California" in g.name


def test_us_state_with_space_in_name():
    assert carbon.lookup("USA/new york").region == "USA/NY"
    assert carbon.lookup("USA/new_york").region == "USA/NY"
    assert carbon.lookup("USA/District of Columbia").region == "USA/DC"


def test_canadian_province_computed_like_codecarbon():
    can = _cc_file("2023", "canada_energy_mix.json")
    on = can["ontario"]
    want = (on["coal"] * 995.725971 + on["petroleum"] * 816.6885263
            + on["naturalGas"] * 743.8415916) / on["total"]
    for spelling in ("CAN/ON", "CA-ON", "Canada/Ontario", "can/ontario"):
        g = carbon.lookup(spelling)
        assert g.region == "CAN/ON"
        assert g.intensity_g_per_kwh == pytest.approx(want)
    assert carbon.lookup("CAN/Québec").region == "CAN/QC"


def test_canadian_codes_are_iso_3166_2():
    pycountry = pytest.importorskip("pycountry")
    by_name = {s.name.lower(): s.code.split("-")[1]
               for s in pycountry.subdivisions.get(country_code="CA")}
    for key in _cc_file("2023", "canada_energy_mix.json"):
        assert carbon._CANADA_CODES[key] == by_name[key]


def test_chinese_province():
    chn = _cc_file("2023", "china_provincial_emissions.json")["data"]
    for spelling in ("CHN/BJ", "CN-BJ", "china/beijing", "CHN/Beijing Municipality"):
        g = carbon.lookup(spelling)
        assert g.region == "CHN/BJ"
        assert g.intensity_g_per_kwh == chn["CN-BJ"]["emission_factor"]
    assert carbon.lookup("CHN/Inner Mongolia").region == "CHN/NM"
    assert carbon.lookup("CHN/neimenggu").region == "CHN/NM"


def test_nordic_zone():
    nordic = _cc_file("nordic_emissions.json")["data"]
    g = carbon.lookup("SWE/SE3")
    assert g.intensity_g_per_kwh == nordic["SE3"]["emission_factor"]
    assert carbon.lookup("NO-NO4").region == "NOR/NO4"


def test_matches_codecarbons_own_computation():
    """Ask CodeCarbon itself (in a child process) for g/kWh and compare."""
    code = r"""
import json
from codecarbon.core.emissions import Emissions
from codecarbon.core.units import Energy
from codecarbon.external.geography import GeoMetadata
from codecarbon.input import DataSource
e = Emissions(DataSource())
kwh = Energy.from_energy(kWh=1.0)
out = {}
for iso, reg in [("USA", "california"), ("USA", "texas"), ("CAN", "ontario"),
                 ("CAN", "alberta"), ("CHN", "beijing"), ("SWE", "SE3")]:
    out[iso + "/" + reg] = e.get_region_emissions(kwh, GeoMetadata(iso, region=reg)) * 1000
for iso in ("FRA", "IND"):
    out[iso] = e.get_country_emissions(kwh, GeoMetadata(iso)) * 1000
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"codecarbon API not usable here: {proc.stderr.strip().splitlines()[-1:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for region, g in theirs.items():
        assert carbon.lookup(region).intensity_g_per_kwh == pytest.approx(g, rel=1e-9), region


# ---------------------------------------------------------------------------------- errors


def test_unknown_region_suggests_close_matches():
    with pytest.raises(carbon.UnknownRegion) as ei:
        carbon.lookup("Frnace")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "FRA" in msg and "greenprof regions" in msg
    assert isinstance(ei.value, UsageError) and ei.value.exit_code == 2


def test_unknown_subregion_suggests_states():
    with pytest.raises(carbon.UnknownRegion, match="USA/CA"):
        carbon.lookup("USA/Califrnia")
    with pytest.raises(carbon.UnknownRegion, match="USA/CA"):
        carbon.lookup("California")  # a bare state name is not a country


def test_no_subnational_data_for_country():
    with pytest.raises(carbon.UnknownRegion, match="DEU"):
        carbon.lookup("DEU/BY")


@pytest.mark.parametrize("bad", ["", "   ", "XYZ", "Atlantis/foo"])
def test_unknown_regions(bad):
    with pytest.raises(carbon.UnknownRegion):
        carbon.lookup(bad)


def test_missing_codecarbon_data(monkeypatch):
    def nope(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", nope)
    carbon._tables.cache_clear()
    carbon.world_average.cache_clear()
    with pytest.raises(carbon.GridDataUnavailable, match="pip install codecarbon"):
        carbon.lookup("FRA")
    w = carbon.world_average()
    assert w.intensity_g_per_kwh == 475.0 and "not installed" in w.source
    assert issubclass(carbon.GridDataUnavailable, GreenprofError)


# --------------------------------------------------------------------------------- listing


def test_regions_listing(mix):
    rows = carbon.regions()
    codes = [r.region for r in rows]
    assert len(codes) == len(set(codes))
    countries = {k for k, v in mix.items() if v.get("carbon_intensity") is not None}
    assert countries <= set(codes)
    assert {"USA/CA", "USA/TX", "CAN/ON", "CHN/GD", "SWE/SE3"} <= set(codes)
    assert codes[-1] == "WORLD"
    for r in rows:  # every listed code looks itself up
        assert carbon.lookup(r.region) == r
        assert r.intensity_g_per_kwh >= 0 and math.isfinite(r.intensity_g_per_kwh)


# ------------------------------------------------------------------------------ arithmetic


def test_co2e_formula():
    # 3.6 MJ = 1 kWh
    assert accounting.co2e_g(3.6e6, 56.0) == pytest.approx(56.0)
    assert accounting.co2e_g(3.6e6, 56.0, pue=1.5) == pytest.approx(84.0)
    assert accounting.co2e_g(1800.0, 475.0, 1.2) == pytest.approx(1800 / 3.6e6 * 475 * 1.2)
    assert accounting.co2e_g(3.6e6, 0.0) == 0.0  # market-based 100 % renewable


def test_cost_and_per_token():
    assert accounting.cost_usd(3.6e6, 0.10) == pytest.approx(0.10)
    assert accounting.cost_usd(3.6e6, 0.10, pue=1.25) == pytest.approx(0.125)
    # 0.455 J/token (ML.ENERGY, Llama-3.1-8B batch 8): 1M tokens = 0.1264 kWh
    assert accounting.usd_per_m_tokens(0.455, 0.10) == pytest.approx(0.455e6 / 3.6e6 * 0.10)
    assert accounting.co2e_g_per_1k_tokens(0.455, 475, 1.1) == pytest.approx(455 / 3.6e6 * 475 * 1.1)


def test_default_price_is_documented():
    assert 0.05 < carbon.DEFAULT_PRICE_USD_PER_KWH < 0.5
    assert "EIA" in carbon.DEFAULT_PRICE_SOURCE


@pytest.mark.parametrize("pue", [0, -1, 0.9, float("nan"), float("inf"), "x", None])
def test_bad_pue(pue):
    with pytest.raises(UsageError, match="PUE"):
        accounting.co2e_g(1.0, 100.0, pue)
    with pytest.raises(UsageError, match="PUE"):
        accounting.cost_usd(1.0, 0.1, pue)


@pytest.mark.parametrize("intensity", [-1, float("nan"), float("inf"), "abc"])
def test_bad_intensity(intensity):
    with pytest.raises(UsageError, match="intensity"):
        accounting.co2e_g(1.0, intensity)


@pytest.mark.parametrize("price", [-0.1, float("nan"), float("-inf"), "abc"])
def test_bad_price(price):
    with pytest.raises(UsageError, match="price"):
        accounting.usd_per_m_tokens(1.0, price)


# ------------------------------------------------------------------------ no side effects


def test_codecarbon_is_not_imported():
    code = ("import sys; from greenprof import carbon; carbon.lookup('USA/CA'); "
            "carbon.lookup('FR'); carbon.regions(); carbon.world_average(); "
            "print('codecarbon' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_no_network(monkeypatch):
    def guard(*a, **k):
        raise AssertionError("greenprof.carbon opened a socket")

    monkeypatch.setattr(socket, "socket", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    monkeypatch.setattr(socket, "getaddrinfo", guard)
    carbon._tables.cache_clear()
    carbon._pycountry_aliases.cache_clear()
    carbon.world_average.cache_clear()
    assert carbon.lookup("FR").region == "FRA"
    assert carbon.lookup("US-CA").region == "USA/CA"
    assert carbon.lookup("CAN/ON").region == "CAN/ON"
    assert carbon.world_average().intensity_g_per_kwh == 475
    assert len(carbon.regions()) > 200
    with pytest.raises(carbon.UnknownRegion):
        carbon.lookup("Frnace")
