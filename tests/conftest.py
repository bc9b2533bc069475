"""Session-wide isolation: built models go to a per-session cache (tiny is built once), and no
test reads the developer's own greenprof settings."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("GREENPROF_CACHE", "GREENPROF_DB", "GREENPROF_REGION",
                                            "GREENPROF_REPLAY", "GREENPROF_INTENSITY", "GREENPROF_PUE",
                                            "GREENPROF_PRICE_KWH", "GREENPROF_THREADS")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ["GREENPROF_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
