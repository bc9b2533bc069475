"""Settings: defaults < ``[tool.greenprof]`` in pyproject.toml < ``GREENPROF_*`` env < flags.

The pyproject.toml is the first one found walking up from the current directory (the project
the user is in); only its ``[tool.greenprof]`` table is read, and a directory above it is never
consulted. Every value remembers where it came from in :attr:`Settings.origin`:
``"default"``, ``"pyproject.toml:<path>"``, ``"env:GREENPROF_X"`` or ``"flag"``.

=====================  =====================  ==========================================
key                    environment            meaning (default)
=====================  =====================  ==========================================
db                     GREENPROF_DB           SQLAlchemy URL or SQLite path (store's own)
region                 GREENPROF_REGION       grid region, e.g. FRA, USA/CA (none: world)
intensity_g_per_kwh    GREENPROF_INTENSITY    market-based factor; beats region (none)
pue                    GREENPROF_PUE          power usage effectiveness, >= 1 (1.0)
price_usd_per_kwh      GREENPROF_PRICE_KWH    electricity price (US commercial 2023 average)
threads                GREENPROF_THREADS      intra-op threads, >= 1 (a physical core each)
sample_hz              GREENPROF_SAMPLE_HZ    power sampler rate, 0 = off (10)
=====================  =====================  ==========================================

Keys in pyproject.toml may also be spelled with dashes (``sample-hz``). An empty environment
variable counts as unset. Malformed values raise :class:`~greenprof.errors.ConfigError` with one
line naming the source as the user wrote it: the flag (``--intensity``, via ``names``), the
variable, or the pyproject key. (``GREENPROF_DB_CONNECT_TIMEOUT`` is read by the store.)
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from greenprof.carbon import DEFAULT_PRICE_USD_PER_KWH
from greenprof.errors import ConfigError

ENV_VARS = {
    "db": "GREENPROF_DB",
    "region": "GREENPROF_REGION",
    "intensity_g_per_kwh": "GREENPROF_INTENSITY",
    "pue": "GREENPROF_PUE",
    "price_usd_per_kwh": "GREENPROF_PRICE_KWH",
    "threads": "GREENPROF_THREADS",
    "sample_hz": "GREENPROF_SAMPLE_HZ",
}

DEFAULT_SAMPLE_HZ = 10.0

#: How the command line spells each setting: what messages name when the value came from a flag.
CLI_FLAGS = {
    "db": "--db",
    "region": "--region",
    "intensity_g_per_kwh": "--intensity",
    "pue": "--pue",
    "price_usd_per_kwh": "--price-kwh",
    "threads": "--threads",
    "sample_hz": "--sample-hz",
}


@dataclass
class Settings:
    db: str | None = None
    region: str | None = None
    intensity_g_per_kwh: float | None = None
    pue: float = 1.0
    price_usd_per_kwh: float = DEFAULT_PRICE_USD_PER_KWH
    threads: int | None = None
    sample_hz: float = DEFAULT_SAMPLE_HZ
    #: key -> "default" | "pyproject.toml:<path>" | "env:GREENPROF_X" | "flag"
    origin: dict[str, str] = field(default_factory=dict)
    #: the pyproject.toml that was read, if any
    pyproject: Path | None = None
    #: key -> how the caller spells an override (``--intensity`` on the command line)
    names: dict[str, str] = field(default_factory=dict)

    def describe(self, key: str) -> str:
        """Where ``key`` was set, as the user would write it: ``--region``, ``GREENPROF_REGION``,
        ``<path> [tool.greenprof] region``, or the key itself for a default."""
        origin = self.origin.get(key, "default")
        if origin == "flag":
            return self.names.get(key, key)
        if origin.startswith("env:"):
            return origin[4:]
        if origin.startswith("pyproject.toml:"):
            return f"{origin[len('pyproject.toml:'):]} [tool.greenprof] {key}"
        return key


KEYS = tuple(f.name for f in fields(Settings) if f.name not in ("origin", "pyproject", "names"))


# --------------------------------------------------------------------------------------------
# value parsers: (raw value) -> parsed value, raising ValueError with the reason


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(raw, (int, float)):
        v = float(raw)
    elif isinstance(raw, str):
        try:
            v = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    else:
        raise ValueError(f"expected a number, got {raw!r}")
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return v


def _pue(raw: Any) -> float:
    v = _number(raw)
    if v < 1.0:
        raise ValueError(f"PUE is facility energy / IT energy, so it is >= 1 (got {raw!r})")
    return v


def _non_negative(unit: str) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        v = _number(raw)
        if v < 0:
            raise ValueError(f"expected {unit} >= 0, got {raw!r}")
        return v

    return parse


def _threads(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected a whole number >= 1, got a boolean")
    if isinstance(raw, int):
        v = raw
    elif isinstance(raw, float) and raw.is_integer():
        v = int(raw)
    elif isinstance(raw, str) and raw.strip().lstrip("+").isdigit():
        v = int(raw.strip())
    else:
        raise ValueError(f"expected a whole number >= 1, got {raw!r}")
    if v < 1:
        raise ValueError(f"expected a whole number >= 1, got {raw!r}")
    return v


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a non-empty string, got {raw!r}")
    return raw.strip()


PARSERS: dict[str, Callable[[Any], Any]] = {
    "db": _text,
    "region": _text,
    "intensity_g_per_kwh": _non_negative("g CO2e/kWh"),
    "pue": _pue,
    "price_usd_per_kwh": _non_negative("USD/kWh"),
    "threads": _threads,
    "sample_hz": _non_negative("samples per second"),
}


# --------------------------------------------------------------------------------------------
# sources


def find_pyproject(cwd: str | os.PathLike | None = None) -> Path | None:
    """The first pyproject.toml in ``cwd`` or one of its parents."""
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    for d in (here, *here.parents):
        p = d / "pyproject.toml"
        if p.is_file():
            return p
    return None


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading [tool.greenprof] on Python 3.10 needs tomli: "
                              "pip install tomli") from None
    return tomllib.loads(text)


#: path -> ((mtime_ns, size), parsed document): a track() block per request re-reads settings,
#: and parsing a project's pyproject.toml costs milliseconds; an edited file is parsed again.
_PARSED: dict[str, tuple[tuple[int, int], dict]] = {}


def read_pyproject(path: Path) -> dict[str, Any]:
    """The ``[tool.greenprof]`` table of ``path`` (empty if absent), keys normalised."""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        hit = _PARSED.get(str(path))
        text = None if hit is not None and hit[0] == stamp else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    try:
        if text is None:
            doc = hit[1]
        else:
            doc = _toml_loads(text)
            _PARSED[str(path)] = (stamp, doc)
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    tool = doc.get("tool", {})
    table = tool.get("greenprof", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.greenprof] must be a table of settings "
                          f"({', '.join(KEYS)})")
    out: dict[str, Any] = {}
    for key, value in table.items():
        k = key.replace("-", "_")
        if k not in KEYS:
            import difflib

            close = difflib.get_close_matches(k, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r} in [tool.greenprof]{hint}; "
                              f"known keys: {', '.join(KEYS)}")
        out[k] = value
    return out


def load_settings(overrides: Mapping[str, Any] | None = None,
                  cwd: str | os.PathLike | None = None,
                  env: Mapping[str, str] | None = None,
                  names: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults, pyproject.toml, environment and ``overrides`` (flags; None = not given).

    ``names``: how messages name each override (the CLI passes :data:`CLI_FLAGS`, so a bad
    ``--intensity`` is reported as ``--intensity``); default the key itself."""
    names = dict(names or {})
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origin = {k: "default" for k in KEYS}

    pyproject = find_pyproject(cwd)
    if pyproject is not None:
        where = f"pyproject.toml:{pyproject}"
        for key, raw in read_pyproject(pyproject).items():
            values[key] = _parse(key, raw, f"{pyproject} [tool.greenprof] {key}")
            origin[key] = where

    for key, var in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        values[key] = _parse(key, raw, f"environment variable {var}")
        origin[key] = f"env:{var}"

    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        k = key.replace("-", "_")
        if k not in KEYS:
            raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(KEYS)}")
        values[k] = _parse(k, raw, names.get(k, k))
        origin[k] = "flag"

    return Settings(**values, origin=origin, pyproject=pyproject, names=names)


def _parse(key: str, raw: Any, where: str) -> Any:
    try:
        return PARSERS[key](raw)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def resolve_intensity(settings: Settings):
    """``(GridIntensity, note | None)`` for ``settings``.

    An explicit intensity wins over a region's factor; a region given with it is kept (stored
    with the runs, named in the note) and must be a known one. With neither, the world average
    and a one-line note telling how to set a region. An unknown region is reported under the
    name it was given by (``--region``, ``GREENPROF_REGION``, ...).
    """
    from greenprof import carbon

    base = None
    if settings.region:
        try:
            base = carbon.lookup(settings.region)
        except carbon.UnknownRegion as e:
            hint = ""
            if "intensity_g_per_kwh" in settings.names:  # the command has an intensity flag
                hint = f", or give a factor with {settings.names['intensity_g_per_kwh']} G"
            raise carbon.UnknownRegion(f"{settings.describe('region')}: {e}{hint}") from None
    if settings.intensity_g_per_kwh is not None:
        g = carbon.check_intensity(settings.intensity_g_per_kwh)
        if base is None:
            return carbon.GridIntensity("USER", "user-supplied factor", g,
                                        "user (market-based factor)", None), None
        note = (f"{settings.describe('intensity_g_per_kwh')} {g:g} g CO2e/kWh overrides the grid factor of "
                f"{base.name} ({base.intensity_g_per_kwh:g} g/kWh); the region {base.region} is kept with "
                "the runs")
        return carbon.GridIntensity(base.region, base.name, g,
                                    f"user (market-based factor; overrides {base.region}'s "
                                    f"{base.intensity_g_per_kwh:g} g/kWh)", None), note
    if base is not None:
        return base, None
    world = carbon.world_average()
    note = (f"no region set: using the world average ({world.intensity_g_per_kwh:g} g/kWh); "
            "set one with --region FRA, GREENPROF_REGION or [tool.greenprof] region")
    return world, note
