"""A worker of tests/test_distributed.py under torchrun: several ``scorelab`` commands, one after another, in one
process group, so that the job's ranks start up (interpreter, imports, group) once for all of them.

    torchrun ... tests/distributed_worker.py COMMANDS.json

COMMANDS.json is a list of ``[argv, env]``: ``scorelab ARGV`` with the variables ``env`` set around it. The group
is joined by ``scorelab.distributed.session()``, as a user's script would join it (env://, gloo on the CPU); every
command finds it there and uses it. A command that fails ends the worker (and torchrun ends the job).
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


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
