"""How a torch process's OpenMP threads wait between parallel regions.

libgomp reads its settings once, when torch loads, so :func:`set_omp_wait` must run
before the first ``import torch`` of a process (``sled`` calls it first thing).

A verifier forward is hundreds of small ops, each a parallel region. With
``OMP_WAIT_POLICY=PASSIVE`` every region wakes the sleeping worker threads through the
kernel; on the 2-core bench machine that made the 60M bench target's rounds 1.4-1.6x
slower than with a short spin (``docs/performance.md``). Spinning without bound
(``ACTIVE``) is no faster and burns a core while the node idles, which two shared cores
cannot afford. So the default is a bounded spin: ``GOMP_SPINCOUNT`` iterations (about a
millisecond) before a worker sleeps. A process whose environment already says either
variable keeps what it says.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Final

SPIN_COUNT: Final = "50000"
_SETTINGS: Final = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def set_omp_wait(env: MutableMapping[str, str] = os.environ) -> None:
    """The bounded spin (:data:`SPIN_COUNT`), unless ``env`` sets a wait policy already."""
    if not any(name in env for name in _SETTINGS):
        env["GOMP_SPINCOUNT"] = SPIN_COUNT


def spin_environment(env: MutableMapping[str, str]) -> None:
    """``env`` for a child torch process: the bounded spin, whatever it inherited."""
    for name in _SETTINGS:
        env.pop(name, None)
    set_omp_wait(env)
