"""Typed errors. Every message is one line that says what is wrong and what to do.

The CLI maps :class:`UsageError` to exit code 2 and every other :class:`GreenprofError` to
exit code 1, and prints the message without a traceback.
"""

from __future__ import annotations


class GreenprofError(Exception):
    """Base of every error greenprof raises on purpose."""

    exit_code = 1


class UsageError(GreenprofError):
    """The caller asked for something that cannot work (bad argument, bad option value)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value (environment variable, pyproject setting) is malformed."""


class SensorError(GreenprofError):
    """Something is wrong with an energy sensor."""


class SensorUnavailable(SensorError):
    """The sensor cannot be used on this machine; ``str(err)`` is the one-line reason with the fix."""


class SensorPermissionError(SensorUnavailable):
    """The sensor exists but this user may not read it."""


class SensorLost(SensorError):
    """A sensor that worked stopped working mid-run (GPU fell off the bus, file vanished, garbage read)."""


# NVML-specific failures, mapped from pynvml's NVMLError_* classes.
class NvmlLibraryNotFound(SensorUnavailable):
    """libnvidia-ml.so could not be loaded."""


class NvmlDriverNotLoaded(SensorUnavailable):
    """The NVIDIA kernel driver is not running."""


class NvmlNotSupported(SensorUnavailable):
    """The GPU does not support the query (no energy counter and no power reading)."""


class NvmlNoPermission(SensorPermissionError):
    """NVML refused the query for this user."""


class GpuLost(SensorLost):
    """The GPU stopped answering (fell off the bus, was reset) during a run."""


class MigUnsupported(SensorUnavailable):
    """The GPU is in MIG mode: NVML reports energy per physical GPU, not per MIG instance."""
