"""The host id stored with every run: settable, stable, never the raw machine id."""

import socket

from greenprof import hostinfo


def test_host_id_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("GREENPROF_HOST_ID", "rack7-node3")
    assert hostinfo.host() == "rack7-node3"


def test_default_host_id_is_the_name_plus_a_hash_of_the_machine_id(monkeypatch, tmp_path):
    monkeypatch.delenv("GREENPROF_HOST_ID", raising=False)
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr(hostinfo, "MACHINE_ID_PATHS", (str(mid),))
    hostinfo._default_host_id.cache_clear()
    try:
        a = hostinfo.host()
        assert a.startswith(socket.gethostname() + "-") and len(a.rsplit("-", 1)[1]) == 8
        assert "0123456789abcdef" not in a  # the id itself never leaves the machine
        assert hostinfo.host() == a  # stable
        mid.write_text("fedcba9876543210fedcba9876543210\n")
        hostinfo._default_host_id.cache_clear()
        assert hostinfo.host() != a  # another machine with the same name is told apart
    finally:
        hostinfo._default_host_id.cache_clear()
