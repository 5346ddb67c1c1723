"""A worker of tests/test_distributed.py under torchrun: several ``scorelab`` commands, one after another, in one
process group, so that the job's ranks start up (interpreter, imports, group) once for all of them.

    torchrun ... tests/distributed_worker.py COMMANDS.json

COMMANDS.json is a list of ``[argv, env]``: ``scorelab ARGV`` with the variables ``env`` set around it. The group
is joined by ``scorelab.distributed.session()``, as a user's script would join it (env://, gloo on the CPU); every
command finds it there and uses it. A command that fails ends the worker (and torchrun ends the job).

:func:`forked` is the other kind of worker: one ``scorelab`` command in a process forked from tests/preforked.py's
server, with the env:// variables of its rank, which joins the group itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def run(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    from scorelab.cli import main
    from scorelab.distributed import session

    with session("cpu"):
        for argv, env in commands:
            before = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                code = main(argv)
            finally:
                for k, v in before.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            if code != 0:
                raise SystemExit(f"scorelab {' '.join(argv)} exited with {code}")


def forked(argv: list[str], env: dict[str, str], log: str) -> None:
    """``scorelab ARGV`` with the variables ``env`` set, its output in ``log``, in a process forked from
    tests/preforked.py's server (whose state is its imports alone, under ``OMP_NUM_THREADS=1``); its exit code
    is the command's."""
    import multiprocessing

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)
    multiprocessing.set_start_method(None, force=True)    # as a fresh interpreter's (see tests/preforked.py)
    from scorelab.cli import main

    raise SystemExit(main(argv))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
