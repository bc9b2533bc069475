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
