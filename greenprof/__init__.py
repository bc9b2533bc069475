"""greenprof: energy and carbon accounting for LLM inference.

Importing this package is cheap and has no side effects: the meter, collectors and every heavy
dependency load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Meter", "Measurement", "Segment", "PowerSample", "GreenprofError", "track",
           "measure_models", "MeasureRequest", "__version__"]

_LAZY = {
    "Meter": "greenprof.meter",
    "Measurement": "greenprof.meter",
    "Segment": "greenprof.meter",
    "PowerSample": "greenprof.meter",
    "GreenprofError": "greenprof.errors",
    "track": "greenprof.tracking",
    "measure_models": "greenprof.measure",
    "MeasureRequest": "greenprof.measure",
}


def _from_source_tree() -> None:
    """Python started in a source checkout (the repository root on sys.path) imports this
    folder, where the design card's top-level folders (collectors/, models/, dashboards/,
    data/) are not inside greenprof/: only an install maps them to greenprof.*. Let the package
    find them beside it then, so `greenprof.collectors` works from the checkout as installed."""
    import os

    here = os.path.dirname(__file__)
    if os.path.isdir(os.path.join(here, "collectors")):  # an installed wheel: nothing to do
        return
    root = os.path.dirname(here)
    if os.path.isfile(os.path.join(root, "collectors", "__init__.py")) and root not in __path__:
        __path__.append(root)


_from_source_tree()


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'greenprof' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
