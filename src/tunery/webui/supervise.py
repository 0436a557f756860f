"""Run one command and record how it ended: ``python -m tunery.webui.supervise STATUS.json -- CMD ...``.

The web UI starts every job (``tunery train``, ``tunery predict``, ...) under
this small supervisor, in a session of its own, so the job outlives the page
and even the web UI's server, and whoever looks later (a reloaded page, a
restarted server) can tell a finished run from a failed or aborted one: when
the command ends, its exit status is written to STATUS.json. SIGINT and SIGTERM
are passed on to the command (the web UI's Abort sends SIGINT, on which
`tunery train` saves a checkpoint and exits with status 130).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunery.fileio import write_text_atomic

FORWARDED = (signal.SIGINT, signal.SIGTERM)


def exit_code(returncode: int) -> int:
    """A child killed by signal N reports -N; a shell would say 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def supervise(status_path: Path, command: list[str]) -> int:
    """Run ``command``, forward stop signals to it, write its exit status; returns that status."""
    started: list[subprocess.Popen] = []
    early: list[int] = []  # a stop signal that came before the command started is passed on after

    def forward(signum: int, _frame) -> None:
        if started:
            started[0].send_signal(signum)
        else:
            early.append(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        started.append(subprocess.Popen(command))
    except OSError as err:  # nothing to run: record it like any other failure
        print(f"error: cannot start {command[0]}: {err}", file=sys.stderr, flush=True)
        write_status(status_path, 127)
        return 127
    for signum in early:
        started[0].send_signal(signum)
    code = exit_code(started[0].wait())  # a forwarded signal's handler runs, then the wait resumes
    write_status(status_path, code)
    return code


def write_status(status_path: Path, code: int) -> None:
    write_text_atomic(status_path, json.dumps({"returncode": code, "ended": time.time()}) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m tunery.webui.supervise STATUS.json -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    return supervise(Path(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main())
