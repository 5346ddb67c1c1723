"""``scorelab`` CLI processes forked from a server that has already imported what a run imports (torch,
torch._dynamo, matplotlib, scorelab): each starts in a fraction of a second instead of the several seconds
of a fresh interpreter (tests/test_crash.py starts six; the elastic and distributed tests start the ranks they
launch themselves so, with :func:`ranks`' env:// variables). :func:`call` runs any module-level function so.

Each is a process of its own, as ``python -m scorelab.cli ARGS`` is: SIGKILL ends it alone and leaves its files as
they are, and it starts from the server's state, in which nothing but imports ran (no torch op, no thread), with
``OMP_NUM_THREADS=1``. The server is multiprocessing's fork server; :func:`stop` ends it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
from pathlib import Path
from typing import Sequence

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


def _child(target, args: tuple, log: str, err: str | None, env: dict[str, str] | None) -> None:
    files = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in ([log, err] if err else [log])]
    os.dup2(files[0], 1)
    os.dup2(files[-1], 2)
    for f in files:
        os.close(f)
    os.environ.update(env or {})
    # The platform's default start method, as in a fresh interpreter (a fork server's child is given the fork
    # server's, under which tqdm's lock is a semaphore that the shared resource tracker reports as leaked on a kill).
    multiprocessing.set_start_method(None, force=True)
    raise SystemExit(target(*args))


def _cli(argv: list[str]) -> int:
    from scorelab.cli import main

    return main(argv)


def call(target, args: Sequence, log: Path, *, err: Path | None = None,
         env: dict[str, str] | None = None) -> multiprocessing.Process:
    """``target(*args)`` (a module-level function) in a forked process with the variables ``env`` set, its stdout
    written to ``log`` and its stderr to ``err`` (default: ``log`` too); ``.exitcode`` is what it returns, as a
    subprocess's returncode (-9 after SIGKILL)."""
    proc = _context().Process(target=_child, args=(target, tuple(args), str(log), None if err is None else str(err),
                                                   env), daemon=True)
    proc.start()
    return proc


def start(argv: list[str], log: Path, **kwargs) -> multiprocessing.Process:
    """``scorelab ARGV`` in a forked process (:func:`call`'s ``err`` and ``env`` apply)."""
    return call(_cli, (list(argv),), log, **kwargs)


def ranks(world: int) -> list[dict[str, str]]:
    """The env:// variables of each of ``world`` ranks on a free localhost port, as torchrun's workers have them
    (rank 0 hosts the store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)} for r in range(world)]


def stop() -> None:
    """End the fork server (it would otherwise live as long as this process, holding its imports)."""
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        os.kill(server._forkserver_pid, signal.SIGKILL)   # (a clean exit would take seconds to unload torch)
        server._stop()
