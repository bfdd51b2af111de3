"""Stopping cleanly: SIGTERM (a spot instance reclaimed) and Ctrl-C finish the step and checkpoint."""

from __future__ import annotations

import signal
import sys


class StopSignal:
    """SIGTERM/SIGINT ask for a clean stop: the step finishes, a checkpoint is written, exit 0. A
    second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:
            print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)", file=sys.stderr, flush=True)
        else:
            print(f"\n{self.requested}: stopping after this step, with a checkpoint", file=sys.stderr, flush=True)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
