"""A test CA and a server certificate for the broker's TLS listener (``sled credentials --ca``).

    sled credentials --ca /etc/mosquitto/certs --tls-host broker.lan --tls-host 192.168.1.10

writes, into that folder, what ``broker/mosquitto.conf`` names:

    ca.crt      the CA certificate: copy it to every client (``--tls-ca``)
    ca.key      the CA's private key (0600): keep it off the broker once the server is signed
    server.crt  the broker's certificate, signed by the CA, with the hosts as subject
                alternative names (DNS names or IP addresses)
    server.key  its private key (0640, group ``mosquitto`` when run as root)

Keys are EC P-256. The ``openssl`` command-line tool does the work (Debian ships it; the
``cryptography`` package is not a dependency). An existing CA in the folder is reused, so
a second run re-issues the server certificate for new hosts without touching the clients.
This is a private test CA: for a public broker use a CA your clients already trust.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CA_DAYS: Final = 3650
SERVER_DAYS: Final = 825  # the most that Apple and browsers accept for a server certificate
EC_KEY: Final = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
OPENSSL_TIMEOUT_S: Final = 30.0


class CertificateError(RuntimeError):
    """openssl is missing or failed, or a host name is unusable."""


@dataclass(frozen=True, slots=True)
class CaFiles:
    """The files :func:`make_test_ca` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def subject_alt_names(hosts: Sequence[str]) -> str:
    """``DNS:broker.lan,IP:127.0.0.1`` for these hosts (IP addresses recognised)."""
    if not hosts:
        raise CertificateError("name at least one host the clients connect to (--tls-host)")
    names = []
    for host in hosts:
        if not host or any(c in host for c in ",/ \t\n"):
            raise CertificateError(f"not a host name or address: {host!r}")
        try:
            names.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise CertificateError("openssl is not installed (Debian: apt-get install -y openssl)")
    try:
        done = subprocess.run(
            [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise CertificateError(f"openssl {args[0]} took over {OPENSSL_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_test_ca(
    folder: Path,
    hosts: Sequence[str],
    *,
    group_gid: int | None = None,
    ca_days: int = CA_DAYS,
    server_days: int = SERVER_DAYS,
) -> CaFiles:
    """A CA (kept when ``ca.crt``/``ca.key`` exist) and a server certificate for ``hosts``.

    ``group_gid``: give ``server.key`` to this group (mode 0640) so a broker that drops
    root privileges can read it; otherwise it is 0600.
    """
    san = subject_alt_names(hosts)
    folder.mkdir(parents=True, exist_ok=True)
    pki = CaFiles(
        folder / "ca.crt", folder / "ca.key", folder / "server.crt", folder / "server.key"
    )
    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        _openssl("req", "-x509", *EC_KEY, "-days", str(ca_days), "-subj", "/CN=sled test CA",
                 "-keyout", pki.ca_key.name, "-out", pki.ca_cert.name, cwd=folder)  # fmt: skip
    os.chmod(pki.ca_key, 0o600)
    ext = folder / "server.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    csr = folder / "server.csr"
    try:
        _openssl("req", *EC_KEY, "-subj", f"/CN={hosts[0]}", "-keyout", pki.server_key.name,
                 "-out", csr.name, cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", csr.name, "-CA", pki.ca_cert.name, "-CAkey",
                 pki.ca_key.name, "-CAcreateserial", "-days", str(server_days), "-extfile",
                 ext.name, "-out", pki.server_cert.name, cwd=folder)  # fmt: skip
    finally:
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
    if group_gid is not None:
        os.chown(pki.server_key, -1, group_gid)
    os.chmod(pki.server_key, 0o640 if group_gid is not None else 0o600)
    for public in (pki.ca_cert, pki.server_cert):
        os.chmod(public, 0o644)
    return pki


def ca_command(folder: Path, hosts: list[str], group: str | None) -> int:
    """``sled credentials --ca DIR [--tls-host HOST]…``: the exit status."""
    import grp
    import sys

    try:
        gid = grp.getgrnam(group).gr_gid if group is not None else None
        pki = make_test_ca(folder, hosts or ["localhost", "127.0.0.1"], group_gid=gid)
    except (CertificateError, OSError, KeyError) as exc:
        print(f"sled credentials: {exc}", file=sys.stderr)
        return 1
    print(f"CA {pki.ca_cert} (copy to every client), server certificate {pki.server_cert}")
    print(f"keep {pki.ca_key} off the broker once its certificate is signed", file=sys.stderr)
    return 0
