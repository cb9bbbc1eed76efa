"""What one training run is: sizes, step counts and model shapes (pure values)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.models import EOS_TOKEN, LlamaShape

SPECIAL_TOKEN = EOS_TOKEN  # bos, eos, pad and unk of the demo tokenizer
VOCAB_SIZE = 4096
MAX_POSITIONS = 1024
DRAFT_K = 4  # draft tokens per round in the acceptance evaluation
DRAFTER_NAMES = ("drafter-1l", "drafter-2l")
SAMPLE_PROMPTS = ("In the beginning", "And God said")


@dataclass(frozen=True)
class Profile:
    """Step counts and evaluation sizes for one run."""

    steps_target: int
    steps_drafter: int
    batch_size: int
    seq_len: int
    warmup_frac: float
    log_every: int
    num_accept_prompts: int  # generate-loop acceptance: prompts, tokens each, new tokens
    accept_prompt_tokens: int
    accept_new_tokens: int
    num_accept_contexts: int  # single-round acceptance: held-out contexts, tokens each
    accept_context_tokens: int
    max_val_windows: int  # cap on held-out windows scored (perplexity, match rate)
    lr_target: float = 3e-3
    lr_drafter: float = 3e-3
    ce_weight: float = 0.1  # weight of CE to the data in the drafter loss; KL gets 1 - it


# fmt: off
FULL = Profile(
    steps_target=360, steps_drafter=400, batch_size=32, seq_len=128, warmup_frac=0.08,
    log_every=10, num_accept_prompts=16, accept_prompt_tokens=32, accept_new_tokens=64,
    num_accept_contexts=512, accept_context_tokens=64, max_val_windows=10_000,
)
QUICK = Profile(  # a smoke run: few steps, small batches, small evaluation
    steps_target=8, steps_drafter=6, batch_size=8, seq_len=64, warmup_frac=0.25,
    log_every=2, num_accept_prompts=2, accept_prompt_tokens=16, accept_new_tokens=16,
    num_accept_contexts=16, accept_context_tokens=16, max_val_windows=64,
)
# fmt: on


@dataclass(frozen=True)
class ModelSpec:
    """Name and shape of one demo Llama (tied embeddings, the demo vocabulary)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int

    @property
    def shape(self) -> LlamaShape:
        return LlamaShape(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            max_positions=MAX_POSITIONS,
            tie_word_embeddings=True,
        )


TARGET_SPEC = ModelSpec("target", hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688)
DRAFTER_SPECS = (
    ModelSpec("drafter-1l", hidden_size=128, num_layers=1, num_heads=4, intermediate_size=344),
    ModelSpec("drafter-2l", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=344),
)


def log(message: str) -> None:
    """Print one progress line immediately (the script is often run with output to a file)."""
    print(message, flush=True)
