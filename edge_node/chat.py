"""Chat messages → prompt text, with the model's own chat template, on the device.

Instruct models expect their conversation rendered by the Jinja template that ships in
``tokenizer_config.json`` (key ``chat_template``; transformers 5 may write it to
``chat_template.jinja`` beside it instead). This module renders it the way transformers'
``apply_chat_template(..., tokenize=False)`` does, with jinja2's immutable sandbox (a
template is untrusted code) and the same environment: ``trim_blocks``, ``lstrip_blocks``,
the ``loopcontrols`` extension, a ``tojson`` filter that does not escape HTML, and the
``raise_exception`` / ``strftime_now`` helpers; the special tokens (``bos_token``,
``eos_token``, …) are template variables. No transformers or torch: only jinja2.

Terms: a *message* is ``{"role": str, "content": str}``; a *conversation* is a list of
them; the *generation prompt* is the opening of the assistant's turn that the template
appends when ``add_generation_prompt`` is true.

On the device, :class:`ChatPrompts` holds the drafter folder's template (``sled
export-drafter`` copies ``tokenizer_config.json`` and ``chat_template.jinja`` beside
``tokenizer.json``) and turns a ``GenerateRequest`` into prompt text: ``prompt`` as it
is, ``messages`` rendered with the generation prompt appended. The text is then
tokenized without adding special tokens, as transformers' ``apply_chat_template(...,
tokenize=True)`` does, so the device's prompt ids equal the target's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from schemas import ErrorCode, GenerateRequest, SchemaError

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(ValueError):
    """No usable chat template, bad messages, or the template refused to render."""


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` dicts; :class:`ChatTemplateError` when malformed."""
    if not messages:
        raise ChatTemplateError("messages is empty")
    checked = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatTemplateError(f"messages[{i}].role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise ChatTemplateError(f"messages[{i}].content must be a string")
        checked.append({"role": str(role), "content": content})
    return checked


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken form: {"content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ChatTemplate:
    """One model's chat template and the special tokens it may refer to."""

    source: str  # Jinja text
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # bos_token -> "<s>", …
    now: Callable[[], datetime] = datetime.now  # for ``strftime_now`` (injected in tests)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str | None = None) -> ChatTemplate:
        """From a parsed ``tokenizer_config.json``; ``source`` overrides its template."""
        template = source if source is not None else config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if not isinstance(template, str) or not template.strip():
            raise ChatTemplateError("the tokenizer config has no chat template")
        special = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k)))}
        return cls(source=template, special_tokens=special)

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTemplate:
        """From a model folder: ``tokenizer_config.json`` (+ ``chat_template.jinja``)."""
        config_path = Path(folder) / CONFIG_FILE
        if not config_path.is_file():
            raise ChatTemplateError(f"{folder} has no {CONFIG_FILE}")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        jinja_path = Path(folder) / TEMPLATE_FILE
        source = jinja_path.read_text(encoding="utf-8") if jinja_path.is_file() else None
        if source is None and "chat_template" not in config:
            raise ChatTemplateError(
                f"{folder} has no chat template ({CONFIG_FILE} or {TEMPLATE_FILE})"
            )
        return cls.from_config(config, source)

    def compile(self) -> None:
        """Compile the template now; :class:`ChatTemplateError` when it does not."""
        _compile(self.source)

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        """The conversation as prompt text (to be tokenized without adding special tokens)."""
        from jinja2.exceptions import TemplateError

        template = _compile(self.source)
        now = self.now
        try:
            return str(
                template.render(
                    messages=check_messages(messages),
                    add_generation_prompt=add_generation_prompt,
                    strftime_now=lambda fmt: now().strftime(fmt),
                    **self.special_tokens,
                )
            )
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template refused the messages: {exc}") from exc


@dataclass(frozen=True)
class ChatPrompts:
    """A device's chat template, or why it has none: a request's prompt text.

    :meth:`load` reads it once from the drafter folder; a folder without a usable
    template still serves ``prompt`` requests, and ``messages`` get ``no_chat_template``.
    """

    template: ChatTemplate | None = None
    missing: str = "none loaded"  # why there is no template

    @classmethod
    def load(cls, folder: Path) -> ChatPrompts:
        try:
            template = ChatTemplate.from_folder(folder)
            template.compile()
        except (ChatTemplateError, OSError, ValueError) as exc:
            return cls(None, str(exc))
        return cls(template, "")

    def text(self, req: GenerateRequest) -> str:
        """``req.prompt``, or ``req.messages`` in the template with the assistant's turn
        opened. :class:`SchemaError` (``no_chat_template`` / ``bad_field``) otherwise."""
        if req.messages is None:
            return req.prompt
        if self.template is None:
            raise SchemaError(
                ErrorCode.NO_CHAT_TEMPLATE,
                f"this device's model has no chat template ({self.missing}); send prompt",
            )
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        try:
            return self.template.render(messages)
        except ChatTemplateError as exc:
            raise SchemaError(ErrorCode.BAD_FIELD, f"generate.messages: {exc}") from exc
