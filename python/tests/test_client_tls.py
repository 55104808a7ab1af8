"""How the SDK picks its daemon (HEARTH_HOST over HEARTH_SOCKET) and the
errors of a TCP daemon's TLS set-up, before any connection (the handshakes
themselves run against a real daemon in tests/integration/test_remote.py)."""
import pytest

from hearth import _client
from hearth._errors import DaemonUnavailable


def test_hearth_host_wins_over_the_socket(monkeypatch):
    monkeypatch.setenv("HEARTH_SOCKET", "/run/x.sock")
    monkeypatch.delenv("HEARTH_HOST", raising=False)
    assert _client.default_socket() == "/run/x.sock"
    monkeypatch.setenv("HEARTH_HOST", "tcp://10.0.0.5:7443")
    assert _client.default_socket() == "tcp://10.0.0.5:7443"
    monkeypatch.setenv("HEARTH_HOST", "unix:///run/y.sock")
    assert _client.default_socket() == "/run/y.sock"


@pytest.mark.parametrize("text,want", [
    ("tcp://10.0.0.5:7443", ("10.0.0.5", 7443)),
    ("tcp://node-1.lan:7443/", ("node-1.lan", 7443)),
    ("tcp://[::1]:7443", ("::1", 7443)),
    ("/run/hearth/hearthd.sock", None),
])
def test_tcp_addresses(text, want):
    assert _client._tcp_address(text) == want


@pytest.mark.parametrize("text", ["tcp://10.0.0.5", "tcp://:7443", "tcp://h:0", "tcp://h:99999", "tcp://h:x"])
def test_bad_tcp_addresses_name_the_value(text):
    with pytest.raises(ValueError) as e:
        _client._tcp_address(text)
    assert text in str(e.value) and "tcp://HOST:PORT" in str(e.value)


def test_missing_tls_files_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for v in ("HEARTH_TLS_CERT", "HEARTH_TLS_KEY", "HEARTH_TLS_CA"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(DaemonUnavailable) as e:
        _client._tls_context()
    assert "HEARTH_TLS_CERT" in str(e.value) and "hearth certs client" in str(e.value)
    # Files that are there but not PEM: the variable and path are named.
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not pem")
    monkeypatch.setenv("HEARTH_TLS_CERT", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("HEARTH_TLS_KEY", str(tmp_path / "key.pem"))
    monkeypatch.setenv("HEARTH_TLS_CA", str(tmp_path / "ca.pem"))
    with pytest.raises(DaemonUnavailable) as e:
        _client._tls_context()
    assert "HEARTH_TLS_CA" in str(e.value) and str(tmp_path / "ca.pem") in str(e.value)


def test_a_refused_connect_to_a_tcp_daemon_says_where_and_may_be_resent():
    err = _client._connect_error("tcp://127.0.0.1:1", ConnectionRefusedError(111, "Connection refused"))
    assert "tcp://127.0.0.1:1" in str(err) and "hearthd --listen" in str(err)
    assert err.refused
