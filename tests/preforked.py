"""``scorelab`` CLI processes forked from a server that has already imported what a run imports (torch,
torch._dynamo, matplotlib, scorelab): each starts in a fraction of a second instead of the several seconds
of a fresh interpreter (tests/test_crash.py starts six).

Each is a process of its own, as ``python -m scorelab.cli ARGS`` is: SIGKILL ends it alone and leaves its files as
they are, and it starts from the server's state, in which nothing but imports ran (no torch op, no thread), with
``OMP_NUM_THREADS=1``. The server is multiprocessing's fork server; :func:`stop` ends it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
from pathlib import Path

#: Imported once by the server (scorelab from the installed package: the children take this process's sys.path).
PRELOAD = ["scorelab.cli", "scorelab.training.preview", "torch._dynamo", "matplotlib.pyplot"]


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"                   # the server's environment is its children's
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return ctx


def _cli(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # The platform's default start method, as in a fresh interpreter (a fork server's child is given the fork
    # server's, under which tqdm's lock is a semaphore that the shared resource tracker reports as leaked on a kill).
    multiprocessing.set_start_method(None, force=True)
    from scorelab.cli import main

    raise SystemExit(main(argv))


def start(argv: list[str], log: Path) -> multiprocessing.Process:
    """``scorelab ARGV`` in a forked process, its stdout and stderr written to ``log``; ``.exitcode`` as a
    subprocess's returncode (-9 after SIGKILL)."""
    proc = _context().Process(target=_cli, args=(list(argv), str(log)), daemon=True)
    proc.start()
    return proc


def stop() -> None:
    """End the fork server (it would otherwise live as long as this process, holding its imports)."""
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        os.kill(server._forkserver_pid, signal.SIGKILL)   # (a clean exit would take seconds to unload torch)
        server._stop()
