"""``sled credentials --ca``: a test CA and a broker certificate that clients can verify."""

from __future__ import annotations

import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from sled.certs import CertificateError, make_test_ca, subject_alt_names
from sled.cli import main

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.mark.parametrize(
    ("hosts", "san"),
    [
        (["broker.lan"], "DNS:broker.lan"),
        (["broker.lan", "192.168.1.10"], "DNS:broker.lan,IP:192.168.1.10"),
        (["::1"], "IP:::1"),
    ],
)
def test_subject_alt_names(hosts: list[str], san: str) -> None:
    assert subject_alt_names(hosts) == san


@pytest.mark.parametrize("hosts", [[], [""], ["a,b"], ["x/y"], ["a b"]])
def test_bad_hosts_are_refused(hosts: list[str]) -> None:
    with pytest.raises(CertificateError):
        subject_alt_names(hosts)


def text_of(cert: Path) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@needs_openssl
def test_server_certificate_verifies_against_the_ca(tmp_path: Path) -> None:
    pki = make_test_ca(tmp_path, ["broker.lan", "10.0.0.5"])
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert), str(pki.server_cert)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    text = text_of(pki.server_cert)
    assert "DNS:broker.lan" in text and "IP Address:10.0.0.5" in text
    assert stat.S_IMODE(pki.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.server_key.stat().st_mode) == 0o600
    ssl.create_default_context(cafile=str(pki.ca_cert))  # a CA Python's ssl accepts
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.crt", "ca.key", "ca.srl", "server.crt", "server.key"
    ]  # fmt: skip


@needs_openssl
def test_second_run_keeps_the_ca(tmp_path: Path) -> None:
    first = make_test_ca(tmp_path, ["broker.lan"])
    ca = first.ca_cert.read_bytes()
    second = make_test_ca(tmp_path, ["broker.lan", "broker.example"])
    assert second.ca_cert.read_bytes() == ca  # clients keep trusting the same CA
    assert "DNS:broker.example" in text_of(second.server_cert)


@needs_openssl
def test_cli_makes_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(["credentials", "--ca", "certs", "--tls-host", "127.0.0.1"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "certs" / "server.crt").exists()
    assert not (tmp_path / "sled.passwd").exists()  # no users named: certificates only
