"""Grid carbon intensity and the carbon / cost arithmetic.

    co2e_g   = energy_j / 3.6e6 x intensity_g_per_kwh x pue
    cost_usd = energy_j / 3.6e6 x price_usd_per_kwh   x pue

Location-based grid intensities come from CodeCarbon's *installed* package data, read at run time
without importing the ``codecarbon`` package (its ``__init__`` pulls in pandas and friends) and
without copying the data into this repository. The files are found through
``importlib.metadata.distribution("codecarbon").files`` the same way
:mod:`greenprof.collectors.cpu_estimate` finds ``cpu_power.csv``:

``data/private_infra/global_energy_mix.json``
    One entry per ISO 3166-1 alpha-3 country: ``carbon_intensity`` (g CO2e/kWh), ``year``,
    ``country_name``. CodeCarbon's methodology page says these figures come from Our World in
    Data's "carbon intensity of electricity" series (OWID builds it from Ember and Energy
    Institute data).
``data/private_infra/2023/usa_emissions.json``
    US states, EPA eGRID2023 total-output CO2e rate (field STC2ERTA) in **lbs/MWh**. Converted
    exactly as CodeCarbon does (``EmissionsPerKWh.LBS_MWH_TO_KG_KWH = 0.00045359237`` in
    codecarbon/core/units.py): 1 lb = 453.59237 g and 1 MWh = 1000 kWh, so
    g/kWh = lbs/MWh x 0.45359237. The national "usa" row (eGRID, 349.7 g/kWh) is not listed:
    the country figure stays the OWID one so every country comes from one source.
``data/private_infra/2023/canada_energy_mix.json``
    Canadian provinces and territories: generation mix in percent, no intensity. CodeCarbon
    (``Emissions._region_energy_mix_to_emissions_rate``) weights only coal, petroleum and
    natural gas by 0.995725971, 0.8166885263 and 0.7438415916 kg/kWh (from
    github.com/responsibleproblemsolving/energy-usage); we do the same so the figures match.
``data/private_infra/2023/china_provincial_emissions.json``
    Chinese provinces: official MEE/NBS 2023 provincial factors in g CO2/kWh (CO2 only).
``data/private_infra/nordic_emissions.json``
    Swedish and Norwegian electricity bidding zones (SE1-SE4, NO1-NO5) and Finland (FI), g
    CO2e/kWh, as CodeCarbon uses them for those regions.
``data/private_infra/carbon_intensity_per_source.json``
    ``world_average`` = 475 g CO2e/kWh, CodeCarbon's fallback for a country it has no data for,
    with its source (IEA Global Energy & CO2 Status Report 2019).

Region syntax (case-insensitive), see :func:`lookup`:

* a country: ISO 3166-1 alpha-3 ``FRA``, alpha-2 ``FR`` (through pycountry, a CodeCarbon
  dependency, when installed) or its name ``France``;
* a sub-national region: ``<country>/<region>``, e.g. ``USA/CA``, ``USA/california``,
  ``CAN/ON``, ``CHN/BJ``, ``CHN/Guangdong``, ``SWE/SE3``. ``-`` or ``:`` may replace ``/``
  after a country code, so ISO 3166-2 codes such as ``US-CA`` and ``CN-BJ`` work too.
  The canonical form is ``ISO3/CODE``.

No function here ever opens a network connection.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from greenprof.errors import GreenprofError, UsageError


#: g/kWh per lbs/MWh: 453.59237 g/lb / 1000 kWh/MWh. CodeCarbon uses the same factor
#: (``EmissionsPerKWh.LBS_MWH_TO_KG_KWH = 0.00045359237`` kg/kWh, codecarbon/core/units.py).
G_PER_KWH_PER_LBS_PER_MWH = 0.45359237

#: CodeCarbon's fossil factors for a generation mix, kg CO2/kWh
#: (``Emissions._region_energy_mix_to_emissions_rate``, codecarbon/core/emissions.py; source
#: github.com/responsibleproblemsolving/energy-usage#conversion-to-co2).
MIX_KG_PER_KWH = {"coal": 0.995725971, "petroleum": 0.8166885263, "naturalGas": 0.7438415916}

#: Used only when CodeCarbon's data is not installed; the same value CodeCarbon ships as
#: ``world_average`` in carbon_intensity_per_source.json.
WORLD_AVERAGE_FALLBACK_G_PER_KWH = 475.0
WORLD_AVERAGE_FALLBACK_SOURCE = (
    "IEA Global Energy & CO2 Status Report 2019 (CodeCarbon's world average; "
    "codecarbon data not installed)"
)

#: US average retail price of electricity to the commercial sector, 2023: 12.59 cents/kWh
#: (U.S. EIA, Electric Power Annual 2023, final 2023 data; revenue / sales, taxes and fees
#: included). Commercial rather than residential (16.00) or industrial (8.04) because data
#: centres and offices buy at about that rate. Override with --price-kwh, GREENPROF_PRICE_KWH
#: or [tool.greenprof] price_usd_per_kwh.
DEFAULT_PRICE_USD_PER_KWH = 0.1259
DEFAULT_PRICE_SOURCE = (
    "US EIA Electric Power Annual 2023: average US commercial-sector retail price, "
    "12.59 cents/kWh"
)

#: ISO 3166-2:CA codes of the provinces and territories in canada_energy_mix.json (keyed by
#: lower-case name there). 13 fixed entries so the canonical code does not depend on pycountry.
_CANADA_CODES = {
    "alberta": "AB", "british columbia": "BC", "manitoba": "MB", "new brunswick": "NB",
    "newfoundland and labrador": "NL", "northwest territories": "NT", "nova scotia": "NS",
    "nunavut": "NU", "ontario": "ON", "prince edward island": "PE", "quebec": "QC",
    "saskatchewan": "SK", "yukon": "YT",
}

#: Common names that are not ISO codes (the ISO 3166-1 alpha-2 code of the UK is GB).
_EXTRA_ALIASES = {"uk": "GBR", "great britain": "GBR", "britain": "GBR", "america": "USA"}

# CodeCarbon's own normalisation of Chinese province names (codecarbon/core/emissions.py).
_CHINA_SUFFIX = re.compile(r"\s+(autonomous region|municipality|province|sheng|shi|zizhiqu)$")

WORLD = "WORLD"


class UnknownRegion(UsageError):
    """The region is not in CodeCarbon's data; the message lists close matches."""


class GridDataUnavailable(GreenprofError):
    """CodeCarbon's grid-intensity package data is not installed or cannot be read."""


@dataclass(frozen=True)
class GridIntensity:
    region: str  # canonical code: "FRA", "USA/CA", "CHN/BJ", "WORLD", "USER"
    name: str
    intensity_g_per_kwh: float
    source: str
    year: int | None


# --------------------------------------------------------------------------------------------
# arithmetic


def _check_factor(value: float, what: str, *, minimum: float, hint: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(v) or math.isinf(v) or v < minimum:
        raise UsageError(f"{what} must be a finite number >= {minimum:g}, got {value!r}: {hint}")
    return v


def check_pue(pue: float) -> float:
    """PUE = total facility energy / IT energy, so it is >= 1 (1.0 = no overhead counted)."""
    return _check_factor(pue, "PUE", minimum=1.0,
                         hint="it is facility energy / IT energy (1.0 counts no overhead, "
                              "1.1-1.6 is typical for a data centre)")


def check_intensity(intensity_g_per_kwh: float) -> float:
    """Zero is allowed: a market-based factor for 100% contracted renewables can be 0."""
    return _check_factor(intensity_g_per_kwh, "grid intensity (g CO2e/kWh)", minimum=0.0,
                         hint="pass g CO2e per kWh, e.g. --intensity 56")


def check_price(price_usd_per_kwh: float) -> float:
    return _check_factor(price_usd_per_kwh, "electricity price (USD/kWh)", minimum=0.0,
                         hint="pass US dollars per kWh, e.g. --price-kwh 0.13")


# --------------------------------------------------------------------------------------------
# CodeCarbon's package data


def _codecarbon_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("codecarbon")
    except metadata.PackageNotFoundError:
        return "?"


def codecarbon_data_file(*parts: str) -> Path | None:
    """Path of ``codecarbon/data/private_infra/<parts...>`` in the installed distribution.

    Found through the distribution's file list (RECORD), then by the package-relative path;
    codecarbon itself is never imported. None when not installed.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution("codecarbon")
    except metadata.PackageNotFoundError:
        return None
    want = ("codecarbon", "data", "private_infra", *parts)
    for f in dist.files or ():
        if tuple(f.parts[-len(want):]) == want:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    p = Path(str(dist.locate_file("/".join(want))))
    return p if p.is_file() else None


def _read_json(*parts: str, required: bool):
    path = codecarbon_data_file(*parts)
    if path is None:
        if required:
            raise GridDataUnavailable(
                f"CodeCarbon's grid data ({'/'.join(parts)}) is not installed: "
                "pip install codecarbon, or pass a factor with --intensity"
            )
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise GridDataUnavailable(f"cannot read CodeCarbon's grid data {path}: {e}") from None


def _norm(text: str) -> str:
    """Case-, accent- and spacing-insensitive key: 'Québec' -> 'quebec', 'new_york' -> 'new york'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.casefold().replace("_", " ").replace(".", "").replace("'", "")
    return " ".join(text.split())


def _title(name: str) -> str:
    small = {"and", "of", "the"}
    return " ".join(w if (i and w in small) else w.capitalize()
                    for i, w in enumerate(name.split()))


@dataclass
class _Tables:
    countries: dict[str, GridIntensity]  # ISO3 -> entry
    subnational: dict[str, dict[str, GridIntensity]]  # ISO3 -> region code -> entry
    sub_aliases: dict[str, dict[str, str]]  # ISO3 -> normalised name/code -> region code
    name_aliases: dict[str, str]  # normalised country name -> ISO3 (from the JSON)


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    ver = _codecarbon_version()
    countries: dict[str, GridIntensity] = {}
    names: dict[str, str] = {}
    mix = _read_json("global_energy_mix.json", required=True)
    src = (f"codecarbon {ver} global_energy_mix.json "
           "(Our World in Data carbon intensity of electricity; Ember / Energy Institute)")
    for iso3, row in mix.items():
        ci = row.get("carbon_intensity") if isinstance(row, dict) else None
        if ci is None or len(iso3) != 3:
            continue
        iso3 = iso3.upper()
        name = str(row.get("country_name") or iso3)
        year = row.get("year")
        countries[iso3] = GridIntensity(iso3, name, float(ci), src,
                                        int(year) if year is not None else None)
        names[_norm(name)] = iso3

    sub: dict[str, dict[str, GridIntensity]] = {}
    aliases: dict[str, dict[str, str]] = {}

    def add(iso3: str, code: str, name: str, g: float, source: str, year: int | None,
            *alias: str) -> None:
        country = countries.get(iso3)
        full = f"{name}, {country.name}" if country and country.name not in name else name
        sub.setdefault(iso3, {})[code] = GridIntensity(f"{iso3}/{code}", full, float(g),
                                                      source, year)
        al = aliases.setdefault(iso3, {})
        for a in (code, name, *alias):
            al.setdefault(_norm(a), code)

    usa = _read_json("2023", "usa_emissions.json", required=False)
    if usa:
        meta = usa.get("_source", {}) if isinstance(usa.get("_source"), dict) else {}
        year = meta.get("year")
        what = meta.get("name") or "EPA eGRID"
        field = f" {meta['field']}" if meta.get("field") else ""
        source = (f"codecarbon {ver} usa_emissions.json ({what}{field}; "
                  f"lbs/MWh x {G_PER_KWH_PER_LBS_PER_MWH} = g/kWh)")
        for key, row in usa.items():
            if key.startswith("_") or not isinstance(row, dict) or key == "usa":
                continue
            code = str(row.get("regionCode") or "").upper()
            if len(code) != 2 or row.get("emissions") is None:
                continue
            add("USA", code, _title(key), float(row["emissions"]) * G_PER_KWH_PER_LBS_PER_MWH,
                source, int(year) if year else None)

    can = _read_json("2023", "canada_energy_mix.json", required=False)
    if can:
        source = (f"codecarbon {ver} 2023/canada_energy_mix.json (provincial generation mix x "
                  "CodeCarbon's coal/petroleum/gas factors, as codecarbon computes it)")
        for key, row in can.items():
            code = _CANADA_CODES.get(_norm(key))
            if code is None or not isinstance(row, dict) or not row.get("total"):
                continue
            g = sum(row.get(k, 0.0) / row["total"] * kg * 1000.0
                    for k, kg in MIX_KG_PER_KWH.items())
            add("CAN", code, _title(key), g, source, 2023)

    chn = _read_json("2023", "china_provincial_emissions.json", required=False)
    if chn:
        meta = chn.get("metadata", {})
        source = (f"codecarbon {ver} china_provincial_emissions.json "
                  "(MEE/NBS 2023 provincial electricity factors, CO2 only)")
        for key, row in (chn.get("data") or {}).items():
            code = key.split("-", 1)[-1].upper()
            year = row.get("year", meta.get("year"))
            add("CHN", code, str(row.get("description") or key), row["emission_factor"],
                source, int(year) if year else None, key, *row.get("names", ()))

    nordic = _read_json("nordic_emissions.json", required=False)
    if nordic:
        source = (f"codecarbon {ver} nordic_emissions.json "
                  "(ENTSO-E generation mix per bidding zone)")
        for key, row in (nordic.get("data") or {}).items():
            iso3 = {"SE": "SWE", "NO": "NOR", "FI": "FIN"}.get(key[:2].upper())
            if iso3 is None:
                continue
            year = row.get("year")
            add(iso3, key.upper(), str(row.get("description") or key), row["emission_factor"],
                source, int(year) if year else None)
    return _Tables(countries, sub, aliases, names)


@lru_cache(maxsize=1)
def _pycountry_aliases() -> dict[str, str]:
    """Normalised alpha-2 codes and names -> ISO3, from pycountry when it is installed."""
    try:
        import pycountry
    except ImportError:
        return {}
    known = _tables().countries
    out: dict[str, str] = {}
    for c in pycountry.countries:
        iso3 = getattr(c, "alpha_3", None)
        if iso3 not in known:
            continue
        for attr in ("alpha_2", "name", "common_name", "official_name"):
            v = getattr(c, attr, None)
            if v:
                out.setdefault(_norm(v), iso3)
    return out


def _country(text: str) -> str | None:
    """ISO3 for a country code or name, or None."""
    t = _tables()
    key = _norm(text)
    if key.upper() in t.countries:
        return key.upper()
    iso3 = t.name_aliases.get(key) or _EXTRA_ALIASES.get(key)
    if iso3 is None and key:
        iso3 = _pycountry_aliases().get(key)
    return iso3 if iso3 in t.countries else None


@lru_cache(maxsize=1)
def world_average() -> GridIntensity:
    """CodeCarbon's world average (carbon_intensity_per_source.json ``world_average``)."""
    data = _read_json("carbon_intensity_per_source.json", required=False)
    if not data or data.get("world_average") is None:
        return GridIntensity(WORLD, "World average", WORLD_AVERAGE_FALLBACK_G_PER_KWH,
                             WORLD_AVERAGE_FALLBACK_SOURCE, None)
    url = data.get("world_average_source") or ""
    source = (f"codecarbon {_codecarbon_version()} carbon_intensity_per_source.json "
              f"world_average (IEA Global Energy & CO2 Status Report 2019{'; ' + url if url else ''})")
    return GridIntensity(WORLD, "World average", float(data["world_average"]), source, None)


def _subnational(iso3: str, part: str) -> GridIntensity | None:
    t = _tables()
    regions = t.subnational.get(iso3, {})
    key = _norm(part.replace("-", " "))
    code = t.sub_aliases.get(iso3, {}).get(key)
    if code is None and iso3 == "CHN":
        code = t.sub_aliases.get(iso3, {}).get(_CHINA_SUFFIX.sub("", key))
    if code is None:
        code = t.sub_aliases.get(iso3, {}).get(_norm(part))
    return regions.get(code) if code else None


def lookup(region: str) -> GridIntensity:
    """Grid intensity of ``region`` (see the module docstring for the syntax).

    Raises :class:`UnknownRegion` with close matches, :class:`GridDataUnavailable` when
    CodeCarbon's data is missing.
    """
    if not isinstance(region, str) or not region.strip():
        raise UnknownRegion("empty region: pass a country code such as FRA, or run "
                            "`greenprof regions` to list them")
    text = region.strip()
    if _norm(text) == "world":
        return world_average()
    t = _tables()
    iso3 = _country(text)
    if iso3 is not None:
        return t.countries[iso3]
    m = re.match(r"^\s*(.+?)\s*[/:]\s*(.+?)\s*$", text) or re.match(
        r"^\s*([A-Za-z]{2,3})\s*-\s*(.+?)\s*$", text)
    if m:
        iso3 = _country(m.group(1))
        if iso3 is not None:
            hit = _subnational(iso3, m.group(2))
            if hit is not None:
                return hit
            if iso3 in t.subnational:
                codes = sorted(t.subnational[iso3])
                sug = _suggest(m.group(2), list(t.sub_aliases[iso3]),
                               lambda k: f"{iso3}/{t.sub_aliases[iso3][k]} "
                               f"({t.subnational[iso3][t.sub_aliases[iso3][k]].name})")
                hint = f"did you mean {', '.join(sug)}? " if sug else ""
                raise UnknownRegion(
                    f"unknown region {region!r} in {t.countries[iso3].name}: {hint}"
                    f"known: {', '.join(iso3 + '/' + c for c in codes[:8])}"
                    f"{' ...' if len(codes) > 8 else ''}; `greenprof regions` lists them all")
            raise UnknownRegion(
                f"no sub-national data for {t.countries[iso3].name} in CodeCarbon's data: "
                f"use the country ({iso3})")
    keys = {k: (v, t.countries[v].name)
            for k, v in {**t.name_aliases, **_pycountry_aliases(),
                         **{c.lower(): c for c in t.countries}}.items()}
    for iso3, al in t.sub_aliases.items():
        for k, code in al.items():
            g = t.subnational[iso3][code]
            keys.setdefault(k, (g.region, g.name))
    sug = _suggest(text, list(keys), lambda k: f"{keys[k][0]} ({keys[k][1]})")
    hint = f"did you mean {', '.join(sug)}? " if sug else ""
    raise UnknownRegion(f"unknown region {region!r}: {hint}run `greenprof regions` to list them")


def _suggest(text: str, keys: list[str], show) -> list[str]:
    import difflib

    out: list[str] = []
    for k in difflib.get_close_matches(_norm(text), keys, n=6, cutoff=0.6):
        s = show(k)
        if s not in out:
            out.append(s)
    return out[:3]


def regions() -> list[GridIntensity]:
    """Every country and sub-national region CodeCarbon has data for, then the world average.

    Countries sorted by ISO3, each followed by its sub-national regions.
    """
    t = _tables()
    out: list[GridIntensity] = []
    for iso3 in sorted(t.countries):
        out.append(t.countries[iso3])
        out.extend(t.subnational.get(iso3, {})[c] for c in sorted(t.subnational.get(iso3, {})))
    out.append(world_average())
    return out
