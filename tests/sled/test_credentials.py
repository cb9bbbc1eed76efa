"""Password hashes in mosquitto's format, the ACL text, and the ``sled credentials`` command."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
from pathlib import Path

import pytest

from schemas import Topics
from sled.cli import main
from sled.credentials import (
    CredentialsError,
    hash_password,
    new_password,
    read_acl_roles,
    read_password_file,
    render_acl,
    update_password_file,
    verify_password,
    write_credentials,
)

# Written by `mosquitto_passwd -b pw dev1 secret1` (mosquitto 2.0.11).
MOSQUITTO_LINE = (
    "dev1:$7$101$I4BFLROqTRJPeTgJ$nANKABUIgl2SFP4/5ViMuAE9Rc6mhpga6bPbZkf9RltJKloxtwDxFU+"
    "r2vSzS4iVAFzNfv/wPgpkiT3GcSIeGA=="
)
needs_mosquitto_passwd = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed"
)


def test_hash_matches_mosquitto_passwd_output() -> None:
    _, hashed = MOSQUITTO_LINE.split(":", 1)
    salt = base64.b64decode(hashed.split("$")[3])
    assert hash_password("secret1", salt=salt) == hashed
    assert verify_password("secret1", hashed)
    assert not verify_password("secret2", hashed)


def test_generated_passwords_never_read_as_a_command_line_option() -> None:
    # One URL-safe token in 64 starts with '-'; 3000 draws all avoid it only by design.
    words = [new_password() for _ in range(3000)]
    assert not [w for w in words if w.startswith("-")]
    assert len(set(words)) == len(words)
    assert all(len(w) == 24 and re.fullmatch(r"[A-Za-z0-9_-]+", w) for w in words)


def test_hash_format_and_random_salt() -> None:
    a, b = hash_password("pw"), hash_password("pw")
    assert a != b  # fresh 12-byte salt each time
    _, seven, iterations, salt, digest = a.split("$")
    assert (seven, iterations) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64
    assert verify_password("pw", a) and verify_password("pw", b)


@pytest.mark.parametrize("hashed", ["", "plain", "$7$x$y$z", "$7$101$!!$??", "$5$a$b"])
def test_verify_rejects_malformed_hashes(hashed: str) -> None:
    assert not verify_password("pw", hashed)


@pytest.mark.parametrize(
    "use_binary",
    [pytest.param(True, marks=needs_mosquitto_passwd), False],
    ids=["mosquitto_passwd", "python"],
)
def test_update_password_file_adds_replaces_and_removes(tmp_path: Path, use_binary: bool) -> None:
    path = tmp_path / "passwd"
    update_password_file(path, {"a": "pa", "b": "pb"}, use_mosquitto_passwd=use_binary)
    first = read_password_file(path)
    assert set(first) == {"a", "b"} and verify_password("pb", first["b"])
    update_password_file(
        path, {"b": "pb2", "c": "pc"}, remove=["a"], use_mosquitto_passwd=use_binary
    )
    second = read_password_file(path)
    assert set(second) == {"b", "c"}
    assert verify_password("pb2", second["b"]) and verify_password("pc", second["c"])


def test_render_acl() -> None:
    acl = render_acl(Topics("p"), devices=["d2", "d1"], verifiers=["v1"], apps=["web"])
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "pattern read p/verifier/+/status",
        "pattern write p/dev/%u/draft",
        "pattern write p/dev/%u/draft/+",
        "pattern write p/dev/%u/out/+",
        "pattern write p/dev/%u/status",
        "pattern read p/dev/%u/verdict",
        "pattern read p/dev/%u/req",
        "user v1",
        "topic read p/dev/+/draft",
        "topic read p/dev/+/draft/+",
        "topic read p/dev/+/status",
        "topic write p/dev/+/verdict",
        "topic write p/verifier/+/status",
        "user web",
        "topic read p/dev/+/out/+",
        "topic read p/dev/+/status",
        "topic write p/dev/+/req",
    ]
    assert "# sled-device: d1\n# sled-device: d2\n" in acl


def test_write_credentials_then_update(tmp_path: Path) -> None:
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    made = write_credentials(
        pw,
        acl,
        prefix="site/sled",
        devices=["pi-1"],
        verifiers=["v1"],
        apps=["web"],
        use_mosquitto_passwd=False,
    )
    assert [(c.username, c.role) for c in made] == [
        ("pi-1", "device"),
        ("v1", "verifier"),
        ("web", "app"),
    ]
    assert all(c.password and len(c.password) >= 24 for c in made)
    hashes = read_password_file(pw)
    assert all(verify_password(c.password or "", hashes[c.username]) for c in made)
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600

    # A second run adds a device, removes the app, keeps the prefix and the other passwords.
    again = write_credentials(
        pw,
        acl,
        devices=["pi-2"],
        remove=["web"],
        passwords={"pi-2": "chosen"},
        use_mosquitto_passwd=False,
    )
    assert [(c.username, c.password) for c in again] == [("pi-2", "chosen")]
    assert read_acl_roles(acl) == (
        "site/sled",
        {"pi-1": "device", "pi-2": "device", "v1": "verifier"},
    )
    after = read_password_file(pw)
    assert set(after) == {"pi-1", "v1", "pi-2"}
    assert after["pi-1"] == hashes["pi-1"]
    assert "user web" not in acl.read_text()
    assert "user v1\ntopic read site/sled/dev/+/draft\n" in acl.read_text()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"devices": ["a/b"]}, "usernames are topic ids"),
        ({"devices": ["pi+"]}, "usernames are topic ids"),
        ({"verifiers": ["#"]}, "usernames are topic ids"),
        ({"devices": ["x"], "verifiers": ["x"]}, "'x' cannot be both device and verifier"),
        ({"devices": ["pi-1"], "passwords": {"pi-9": "p"}}, "users not named: ['pi-9']"),
    ],
)
def test_write_credentials_rejects(tmp_path: Path, kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(CredentialsError, match=re.escape(says)):
        write_credentials(
            tmp_path / "pw",
            tmp_path / "acl",
            use_mosquitto_passwd=False,
            **kwargs,  # type: ignore[arg-type]
        )


def test_a_user_keeps_one_role_across_runs(tmp_path: Path) -> None:
    write_credentials(
        tmp_path / "pw", tmp_path / "acl", verifiers=["v1"], use_mosquitto_passwd=False
    )
    with pytest.raises(CredentialsError, match="cannot be both verifier and device"):
        write_credentials(
            tmp_path / "pw", tmp_path / "acl", devices=["v1"], use_mosquitto_passwd=False
        )


def test_command_writes_secrets_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw, acl, out = tmp_path / "pw", tmp_path / "acl", tmp_path / "secrets.json"
    argv = [
        "credentials",
        "--password-file",
        str(pw),
        "--acl-file",
        str(acl),
        "--device",
        "pi-1",
        "--verifier",
        "v1",
        "--secrets",
        str(out),
        "--no-mosquitto-passwd",
        "--prefix",
        "x/y",
    ]
    assert main(argv) == 0
    body = json.loads(out.read_text())
    assert [(u["username"], u["role"]) for u in body] == [("pi-1", "device"), ("v1", "verifier")]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    hashes = read_password_file(pw)
    assert all(verify_password(u["password"], hashes[u["username"]]) for u in body)
    assert main(["credentials", "--acl-file", str(acl), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "prefix x/y" in listed and "device    pi-1" in listed and "verifier  v1" in listed


def test_command_prints_passwords_and_checks_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = ["--password-file", str(tmp_path / "pw"), "--acl-file", str(tmp_path / "acl")]
    assert main(["credentials", *files, "--app", "web", "--password", "s3cret!"]) == 0
    assert "app       web" in capsys.readouterr().out
    assert verify_password("s3cret!", read_password_file(tmp_path / "pw")["web"])
    assert main(["credentials", *files]) == 2  # nothing to do
    assert main(["credentials", *files, "--device", "a", "--device", "b", "--password", "x"]) == 2
    assert main(["credentials", *files, "--device", "bad/id"]) == 1
    assert "usernames are topic ids" in capsys.readouterr().err
