"""The edge runtime must run without torch or transformers (a Raspberry Pi install)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.edge_node.conftest import TinyDrafter

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = ("torch", "transformers")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the edge runtime must not import it")
            return None

    sys.meta_path.insert(0, Blocker())

    import edge_node.service, edge_node.cli, edge_node.drafter, edge_node.policy
    import edge_node.sampling, edge_node.config
    import sled.cli

    # the runtime path for real: load the exported drafter and draft a few tokens
    from pathlib import Path
    from edge_node.drafter import Drafter
    from edge_node.sampling import next_distribution

    d = Drafter(Path(sys.argv[1]), threads=1)
    state = d.new_state()
    logits = d.feed(state, d.encode("In the beginning"))
    for _ in range(3):
        logits = d.feed(state, [next_distribution(logits, temperature=0.0).top])
    d.rollback(state, 2)

    # `sled edge` is registered and its --help builds without torch
    parser = sled.cli.build_parser()
    assert "edge" in parser._subparsers._group_actions[0].choices
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


def test_edge_runtime_imports_no_torch_or_transformers(llama_drafter: TinyDrafter) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(llama_drafter.onnx_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
