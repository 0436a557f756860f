"""Stop a run cleanly on Ctrl+C or SIGTERM: finish the step, save a checkpoint, exit.

The web UI's Abort button and job schedulers send SIGINT/SIGTERM. Killing the
process mid-step would lose everything since the last ``save_steps``; instead
the first signal only raises a flag that the loop checks after each optimizer
step, so the run stops at a step boundary with a resumable checkpoint. A second
signal interrupts at once (the usual escape when a step takes too long).
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the first stop signal; a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.requested = False

    def handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def stop_on_signal() -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM while the block runs (signal handlers only exist in the main thread)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
