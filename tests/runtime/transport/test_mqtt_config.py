"""MqttConfig from broker URLs (no network)."""

from __future__ import annotations

import pytest

from runtime.transport import MqttConfig


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker", "broker", 8883, True),
        ("ssl://broker:9999", "broker", 9999, True),
        ("tcp://10.0.0.2:1884", "10.0.0.2", 1884, False),
        ("localhost:1885", "localhost", 1885, False),
    ],
)
def test_from_url(url: str, host: str, port: int, tls: bool) -> None:
    cfg = MqttConfig.from_url(url)
    assert (cfg.host, cfg.port, cfg.tls) == (host, port, tls)
    assert cfg.username is None and cfg.password is None


def test_from_url_credentials_are_unquoted_and_overrides_win() -> None:
    cfg = MqttConfig.from_url("mqtt://pi-1:p%40ss%3Aw@h:1", client_id="pi-1", protocol="3.1.1")
    assert (cfg.username, cfg.password) == ("pi-1", "p@ss:w")
    assert (cfg.client_id, cfg.protocol) == ("pi-1", "3.1.1")
    assert MqttConfig.from_url("mqtt://u:p@h", username=None).username == "u"  # None: no override


def test_from_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="scheme must be"):
        MqttConfig.from_url("http://broker:80")


def test_url_and_with_() -> None:
    cfg = MqttConfig(host="h", port=1)
    assert cfg.url == "mqtt://h:1"
    assert cfg.with_(tls=True, port=2).url == "mqtts://h:2"
    assert cfg.port == 1  # frozen: with_ returns a copy
