"""Why a generation could not be served.

They end a generation with a ``ResultFinal`` whose ``finish_reason`` is ``error``; they
never stop the node::

    EdgeError                 a generation could not be served
    └── TokenizerMismatch     drafter and verifier tokenizers differ (fingerprints)
"""

from __future__ import annotations


class EdgeError(Exception):
    """A generation could not be served; the message says why."""


class TokenizerMismatch(EdgeError):
    """The drafter's tokenizer fingerprint differs from the verifier's."""
