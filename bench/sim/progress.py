"""Progress of a long benchmark run: a tqdm bar when tqdm is installed, plain lines otherwise."""

from __future__ import annotations

import time
from typing import Any


class Progress:
    """A tqdm bar when tqdm is installed, plain lines otherwise."""

    def __init__(self, total: int) -> None:
        self.started = time.monotonic()
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=total, unit="step", dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.total = total
        self.done = 0

    def tick(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(what[:48])
            self.bar.update(1)
        else:
            elapsed = time.monotonic() - self.started
            print(f"[{self.done}/{self.total} {elapsed:5.0f}s] {what}", flush=True)

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.total  # reused points and skipped probes end the run early
            self.bar.refresh()
            self.bar.close()
