import contextlib
import io
import os
import re

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import scorelab as sl
from scorelab.cli import main as cli_main

# Two threads in all: one process with two, or under pytest-xdist's two workers one each. The same limit for the
# BLAS numpy has loaded and for scikit-learn's OpenMP (read when it loads): its gradient-boosted trees would
# otherwise start a thread per core in each worker, whose waiting burns the other worker's core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = int(os.environ.get("SCORELAB_TEST_THREADS", max(1, 2 // _WORKERS)))
torch.set_num_threads(_THREADS)
os.environ["OMP_NUM_THREADS"] = str(_THREADS)
threadpool_limits(_THREADS)


#: The slowest files start first, so that two workers finish together (longest first).
_SLOW_FIRST = ("test_demo", "test_samplers", "test_commands", "test_training", "test_evaluation", "test_elastic",
               "test_general_sde", "test_distributed", "test_diffflow")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(_SLOW_FIRST)

    items.sort(key=rank)                                  # stable: the order within a file is kept


#: A tqdm line: "desc:  40%|####  | 2/5 [...]" or, without a total, "desc: 12it [...]".
_PROGRESS = re.compile(r"\d+%\||\d+it \[")


def run_cli(args: list[str]) -> tuple[int, str]:
    """``scorelab ARGS`` in this process: the exit code, and what stderr says from the first ``scorelab`` line
    on, progress bars left out (so a message that runs over several lines keeps all of them)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(args)
        except SystemExit as e:                   # argparse exits
            code = int(e.code or 0)
    lines = [line.rsplit("\r", 1)[-1] for line in err.getvalue().splitlines()]
    lines = [line for line in lines if line.strip() and not _PROGRESS.search(line)]
    first = next((i for i, line in enumerate(lines) if line.startswith("scorelab")), len(lines))
    return code, "\n".join(lines[first:])


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One ``SCORELAB_CACHE`` for this test run, shared by pytest-xdist's workers (their temporary folders'
    parent is the run's): the in-domain feature classifier is fitted once per data set, not once per test (two
    workers that miss it at the same moment each fit it, and the cache keeps either copy: they are identical)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "scorelab-cache"
    path.mkdir(exist_ok=True)
    return path


def random_spd(rng: np.random.Generator, d: int, low: float, high: float) -> np.ndarray:
    """A random symmetric positive definite matrix with eigenvalues in [low, high]."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q @ np.diag(rng.uniform(low, high, size=d)) @ q.T


def mixture_2d_params():
    """A 2-D mixture with unequal weights and correlated full covariances."""
    weights = np.array([0.2, 0.5, 0.3])
    means = np.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.2]])
    covs = np.array([[[0.30, 0.12], [0.12, 0.20]],
                     [[0.15, -0.05], [-0.05, 0.25]],
                     [[0.10, 0.00], [0.00, 0.40]]])
    return weights, means, covs


def mixture_16d_params():
    """An anisotropic 16-D mixture: full covariances with condition number ~ 20."""
    rng = np.random.default_rng(16)
    weights = np.array([0.6, 0.4])
    means = rng.normal(scale=0.8, size=(2, 16))
    covs = np.stack([random_spd(rng, 16, 0.02, 0.4) for _ in range(2)])
    return weights, means, covs


@pytest.fixture(scope="session")
def mixture_2d():
    return sl.GaussianMixture(*mixture_2d_params())


@pytest.fixture(scope="session")
def mixture_16d():
    return sl.GaussianMixture(*mixture_16d_params())
