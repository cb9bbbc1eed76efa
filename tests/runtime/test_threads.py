"""The OpenMP wait policy torch processes start with (runtime.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.threads import SPIN_COUNT, set_omp_wait, spin_environment

ROOT = Path(__file__).resolve().parents[2]


def test_a_bounded_spin_unless_the_environment_says_otherwise() -> None:
    env: dict[str, str] = {}
    set_omp_wait(env)
    assert env == {"GOMP_SPINCOUNT": SPIN_COUNT}
    for given in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(given)
        set_omp_wait(env)
        assert env == given  # the operator's choice stands


def test_a_child_verifier_gets_the_spin_whatever_it_inherits() -> None:
    env = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "7", "PATH": "/bin"}
    spin_environment(env)
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": SPIN_COUNT}


@pytest.mark.parametrize(
    ("given", "expect"),
    [({}, f"None {SPIN_COUNT}"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE None")],
)
def test_sled_sets_it_before_torch_loads(given: dict[str, str], expect: str) -> None:
    """libgomp reads the variables when torch loads: ``sled`` must set them first."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    probe = (  # --help exits before any command loads torch
        "import os, sys\n"
        "from sled.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, **given, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip().splitlines()[-1] == expect
