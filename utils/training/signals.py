"""Stopping a run cleanly: SIGINT/SIGTERM become a request honoured after the current step."""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step; a second Ctrl-C aborts at once.

    The loop reads ``signum`` at every step and all ranks agree on it before backward, so every process
    stops at the same step and the checkpoint it writes is resumable.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        # os.write, not print: print is not reentrant if the signal lands inside another print.
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                    f"(Ctrl-C again to abort without saving)\n".encode())


def ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
