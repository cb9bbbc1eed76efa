"""The drafter runtime: an exported ONNX causal LM with KV cache, on onnxruntime.

Only onnxruntime, numpy and tokenizers are used here (no torch), so this runs on a
Raspberry Pi. One :class:`Drafter` holds the model; each sequence being generated has
its own :class:`KVState` (token ids fed so far, their KV cache, next-token logits)::

    drafter = Drafter(Path("drafter-onnx"), threads=1)
    state = drafter.new_state()
    logits = drafter.feed(state, drafter.encode("In the beginning"))   # prefill, [vocab]
    logits = drafter.feed(state, [int(logits.argmax())])               # one decode step
    drafter.rollback(state, 5)                                         # keep 5 tokens

A decode step costs one token of compute: the cache of ``n`` tokens goes in as
``past_key_values.*`` and comes back one longer as ``present.*``. Rolling back slices
the cache, so no recomputation is needed to undo rejected drafts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from edge_node.manifest import Manifest
from schemas import tokenizer_fingerprint

MAX_CHARS_PER_TOKEN = 64  # a prompt over max tokens x this is refused untokenized
LOGITS_HISTORY = 256  # positions whose next-token logits a state keeps (for rollback)

Logits = npt.NDArray[np.float32]


class DrafterError(RuntimeError):
    """The drafter directory cannot be used (fingerprint mismatch, bad graph, ...)."""


@dataclass
class KVState:
    """One sequence's drafter state: ids fed so far and their KV cache.

    ``past[2*i]``/``past[2*i+1]`` are layer ``i``'s keys/values,
    ``[1, kv_heads, len(tokens), head_dim]``. ``logits[pos]`` are the next-token logits
    after ``tokens[: pos + 1]`` for recent positions.
    """

    tokens: list[int] = field(default_factory=list)
    past: list[np.ndarray] = field(default_factory=list)
    logits: dict[int, Logits] = field(default_factory=dict)
    steps: int = 0  # forward passes run on this state

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def next_logits(self) -> Logits | None:
        """Logits for the token after ``tokens`` (``[vocab]``), None if not known."""
        return self.logits.get(len(self.tokens) - 1)


class Drafter:
    """An exported drafter directory loaded into onnxruntime."""

    def __init__(self, model_dir: Path, *, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.load(self.model_dir)
        m = self.manifest
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / m.tokenizer_file))
        self.fingerprint = tokenizer_fingerprint(self.tokenizer.get_vocab(with_added_tokens=True))
        if m.fingerprint and self.fingerprint != m.fingerprint:
            raise DrafterError(
                f"{self.model_dir}: tokenizer fingerprint {self.fingerprint} differs from the "
                f"manifest's {m.fingerprint}; export the drafter again"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.model_dir / m.model_file), options, providers=["CPUExecutionProvider"]
        )
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != m.input_names:
            raise DrafterError(f"graph inputs {graph_inputs} differ from the manifest's")
        self.eos_ids = frozenset(m.eos_ids)
        self.vocab_size = m.vocab_size
        self._kv_dtype = np.dtype(m.kv_dtype)
        self._empty = np.zeros((1, m.num_kv_heads, 0, m.head_dim), dtype=self._kv_dtype)

    # -- text ------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_prompt(self, text: str, max_tokens: int) -> list[int]:
        """``text``'s ids if they are at most ``max_tokens`` and leave a position to
        generate into; DrafterError ("prompt too long") otherwise. A text longer than
        ``MAX_CHARS_PER_TOKEN`` characters a token is refused without tokenizing.
        """
        positions = self.manifest.max_positions
        limit = min(max_tokens, positions - 1) if positions > 0 else max_tokens
        if len(text) > limit * MAX_CHARS_PER_TOKEN:
            raise DrafterError(
                f"prompt too long: {len(text)} characters, this device serves at most "
                f"{limit} tokens (max_prompt_tokens)"
            )
        ids = self.encode(text)
        if len(ids) > limit:
            raise DrafterError(
                f"prompt too long: {len(ids)} tokens, this device serves at most {limit} "
                f"(max_prompt_tokens, drafter max_positions {positions or 'unknown'})"
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- model -----------------------------------------------------------------------
    def new_state(self) -> KVState:
        return KVState(past=[self._empty] * (2 * self.manifest.num_layers))

    def feed(self, state: KVState, ids: Sequence[int]) -> Logits:
        """Run ``ids`` through the model after ``state.tokens``; return next logits ``[vocab]``.

        One forward pass for all of ``ids`` (a prefill when the state is empty).
        """
        if not ids:
            logits = state.next_logits
            if logits is None:
                raise DrafterError("nothing fed yet: no next-token logits")
            return logits
        for tok in ids:
            if not 0 <= tok < self.vocab_size:
                raise DrafterError(f"token id {tok} outside the drafter's vocabulary")
        past_len = len(state.tokens)
        seq = len(ids)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], dtype=np.int64),  # [1, seq]
            "attention_mask": np.ones((1, past_len + seq), dtype=np.int64),  # [1, past+seq]
            "position_ids": np.arange(past_len, past_len + seq, dtype=np.int64)[None, :],
        }
        for name, arr in zip(self.manifest.past_names, state.past, strict=True):
            feeds[name] = arr  # [1, kv_heads, past, head_dim]
        outputs = self.session.run(None, feeds)
        logits = np.asarray(outputs[0])  # [1, seq, vocab]
        state.past = [np.asarray(a) for a in outputs[1:]]  # [1, kv_heads, past+seq, head_dim]
        state.tokens.extend(int(t) for t in ids)
        state.steps += 1
        for j in range(max(0, seq - LOGITS_HISTORY), seq):
            state.logits[past_len + j] = logits[0, j].astype(np.float32, copy=False)
        self._trim_history(state)
        return state.logits[len(state.tokens) - 1]

    def rollback(self, state: KVState, length: int) -> None:
        """Keep the first ``length`` tokens (and their cache); drop the rest.

        The next-token logits come from the history; when they fell out of it the last
        kept token is fed again (one decode step).
        """
        if not 0 <= length <= len(state.tokens):
            raise ValueError(f"cannot roll back to {length} of {len(state.tokens)} tokens")
        if length == len(state.tokens):
            return
        state.tokens = state.tokens[:length]
        state.past = [np.ascontiguousarray(a[:, :, :length, :]) for a in state.past]
        for pos in [p for p in state.logits if p >= length]:
            del state.logits[pos]
        if length > 0 and state.next_logits is None:
            last = state.tokens[-1]
            self.rollback(state, length - 1)
            self.feed(state, [last])

    def sync(self, state: KVState, tokens: Sequence[int]) -> Logits:
        """Make ``state`` hold exactly ``tokens``: keep the common prefix, feed the rest."""
        common = 0
        limit = min(len(tokens), len(state.tokens))
        while common < limit and state.tokens[common] == tokens[common]:
            common += 1
        self.rollback(state, common)
        if common < len(tokens):
            return self.feed(state, list(tokens[common:]))
        logits = state.next_logits
        if logits is None:
            raise DrafterError("no tokens to predict from")
        return logits

    @staticmethod
    def _trim_history(state: KVState) -> None:
        if len(state.logits) > LOGITS_HISTORY:
            cutoff = len(state.tokens) - LOGITS_HISTORY
            for pos in [p for p in state.logits if p < cutoff]:
                del state.logits[pos]
