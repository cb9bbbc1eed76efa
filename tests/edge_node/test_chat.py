"""The device's chat-template renderer equals transformers' ``apply_chat_template``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge_node.chat import ChatPrompts, ChatTemplate, ChatTemplateError, check_messages
from schemas import ChatMessage, GenerateRequest
from tests.conftest import RealPair

ROOT = Path(__file__).resolve().parents[2]

# SmolLM2-135M-Instruct's template, as its GGUF file carries it
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n"
)
# Llama-3 style: special tokens as variables, a filter
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# blocks on their own lines (trim_blocks / lstrip_blocks), loop controls, namespace, tojson
BLOCKY = """\
{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + m['role']) }}
    {% endif %}
    {% if m['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
[{{ ns.n }}] {{ m['role'] | capitalize }}: {{ m['content'] | tojson }}
{% endfor %}
{% if add_generation_prompt %}
[{{ ns.n + 1 }}] Assistant:
{% endif %}
"""
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is MQTT?"}],
    [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": 'Translate to French:\n  «Grüß Gott» — ✓ <b>"ok"</b>'},
    ],
]


def transformers_render(template: str, messages: list[dict[str, str]], gen: bool) -> str:
    """What transformers makes of ``template`` (a tokenizer built here, no download)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL.values())}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), **SPECIAL
    )
    tok.chat_template = template
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


def test_smollm2_template_literal() -> None:
    chat = ChatTemplate(SMOLLM2)
    assert chat.render(CONVERSATIONS[0]) == (
        SMOLLM2_SYSTEM + "<|im_start|>user\nWhat is MQTT?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.render(CONVERSATIONS[1], add_generation_prompt=False) == (
        "<|im_start|>system\nYou answer in one sentence.<|im_end|>\n"
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n"
    )
    assert chat.render(CONVERSATIONS[2]).endswith(
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\n"
        'Translate to French:\n  «Grüß Gott» — ✓ <b>"ok"</b><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_blocky_template_literal() -> None:
    chat = ChatTemplate(BLOCKY, SPECIAL)
    assert chat.render(CONVERSATIONS[2]) == (
        '[1] User: "Hi!"\n[2] Assistant: "Hello! How can I help?"\n'
        '[3] User: "Translate to French:\\n  «Grüß Gott» — ✓ <b>\\"ok\\"</b>"\n[4] Assistant:\n'
    )


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("template", [SMOLLM2, LLAMA3, BLOCKY], ids=["smollm2", "llama3", "blocky"])
def test_equals_transformers(template: str, messages: list[dict[str, str]], gen: bool) -> None:
    pytest.importorskip("transformers")
    expected = transformers_render(template, messages, gen)
    assert ChatTemplate(template, SPECIAL).render(messages, add_generation_prompt=gen) == expected


@pytest.mark.realmodel
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_equals_transformers_on_smollm2(
    smollm2_pair: RealPair, messages: list[dict[str, str]]
) -> None:
    """The device's copy of the template (the drafter export) renders and tokenizes each
    conversation as transformers does with the target's tokenizer."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_pair.target), local_files_only=True)
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ChatTemplate.from_folder(smollm2_pair.target).render(messages) == expected
    config = json.loads((smollm2_pair.target / "tokenizer_config.json").read_text())
    assert ChatTemplate.from_config(config).render(messages) == expected  # the device's copy
    device = ChatPrompts.load(smollm2_pair.drafter_int8)
    assert device.template is not None, device.missing
    request = GenerateRequest(request="r", messages=[ChatMessage(**m) for m in messages])
    text = device.text(request)
    assert text == expected
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    device_tokenizer = Tokenizer.from_file(str(smollm2_pair.drafter_int8 / "tokenizer.json"))
    assert device_tokenizer.encode(text, add_special_tokens=False).ids == list(ids["input_ids"])


@pytest.mark.realmodel
def test_smollm2_stops_at_its_end_of_turn_on_both_sides(smollm2_pair: RealPair) -> None:
    from tokenizers import Tokenizer

    from edge_node.manifest import Manifest
    from runtime.models import eos_ids

    end_of_turn = Tokenizer.from_file(str(smollm2_pair.target / "tokenizer.json")).token_to_id(
        "<|im_end|>"
    )
    assert end_of_turn is not None
    assert end_of_turn in eos_ids(smollm2_pair.target)  # the verifier's and the reference's
    for drafter in (smollm2_pair.drafter_int8, smollm2_pair.drafter_fp32):
        assert end_of_turn in Manifest.load(drafter).eos_ids  # the device's


def test_from_config_and_folder(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "chat_template": [{"name": "default", "template": LLAMA3}, {"name": "x", "template": ""}],
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>",
    }
    chat = ChatTemplate.from_config(config)
    assert chat.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    assert chat.render([{"role": "user", "content": " hi "}]).startswith("<s><|start_header_id|>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate.from_folder(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(SMOLLM2)
    assert (
        ChatTemplate.from_folder(tmp_path)
        .render(CONVERSATIONS[1])
        .startswith("<|im_start|>system\nYou answer")
    )


def test_strftime_now_uses_the_injected_clock() -> None:
    chat = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}", now=lambda: datetime(2026, 1, 2))
    assert chat.render(CONVERSATIONS[0]) == "2026-01-02"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "empty"),
        ([{"role": "robot", "content": "x"}], "role must be one of"),
        ([{"role": "user", "content": 3}], "content must be a string"),
    ],
)
def test_bad_messages(messages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        check_messages(messages)


def test_template_errors_are_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="refused"):
        ChatTemplate(BLOCKY).render([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for %}").render(CONVERSATIONS[0])


def test_sandbox_blocks_escapes() -> None:
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(escape).render(CONVERSATIONS[0])


def test_renders_without_torch_or_transformers() -> None:
    script = textwrap.dedent(
        """
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, Blocker())
        from edge_node.chat import ChatTemplate
        print(ChatTemplate(sys.argv[1]).render([{"role": "user", "content": "hi"}]), end="")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, SMOLLM2],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == SMOLLM2_SYSTEM + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
