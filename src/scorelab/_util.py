"""Small shared helpers: broadcasting, time tensors and argument checks.

Every piece of math in scorelab is written once for a batch of any shape:
points ``(N, D)`` and images ``(N, C, H, W)`` share each line because per-example
coefficients of shape ``(N,)`` are broadcast against ``x`` by :func:`expand_as`.
Schedules are computed in float64 and cast only where they meet ``x``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

TimeLike = float | Sequence[float] | Tensor


def expand_as(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape per-example ``coef`` of shape ``(N,)`` or ``()`` to broadcast against ``x``.

    The result has ``x``'s dtype and device and trailing singleton dimensions,
    so ``expand_as(a, x) * x`` works for points and images alike (docs/DESIGN.md, "Conventions").
    """
    coef = coef.to(device=x.device, dtype=x.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"a per-example coefficient has shape {tuple(coef.shape)} but x has batch size "
            f"{x.shape[0]}; pass one time per example (shape ({x.shape[0]},)) or a scalar"
        )
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def as_time(t: TimeLike, like: Tensor | None = None) -> Tensor:
    """Turn a time (float, sequence or tensor) into a float64 tensor.

    With ``like`` (a batch ``x``), a scalar time is repeated for every example
    and the result lives on ``like``'s device.
    """
    device = like.device if like is not None else (t.device if isinstance(t, Tensor) else None)
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if like is not None:
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        elif t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(
                f"time has shape {tuple(t.shape)} but the batch has {like.shape[0]} examples; "
                "pass a scalar or one time per example"
            )
    return t


def flat_dim(x: Tensor) -> int:
    """Number of dimensions D of one example (everything but the batch axis)."""
    if x.ndim < 2:
        raise ValueError(
            f"expected a batch of shape (N, D) or (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch axis with x[None] or a feature axis with x[:, None]"
        )
    return math.prod(x.shape[1:])


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every axis but the first: a per-example total."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def mean_except_batch(x: Tensor) -> Tensor:
    """Mean over every axis but the first: a per-example average per dimension."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar that a log file can bear: redrawn at most every 10 s when stderr is no terminal
    (a redirected run writes a line now and then, not one per step), as often as tqdm likes on a terminal."""
    import sys

    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 10.0)
    return tqdm(iterable, **kwargs)


def nats_to_bits_per_dim(nats: Tensor, num_dims: int) -> Tensor:
    """A per-example negative log-likelihood in nats as bits per dimension (MATH.md 2): ``nats / (D ln 2)``."""
    return nats / (num_dims * math.log(2))


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: checks at the API's edge."""
    if not condition:
        raise ValueError(message)


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (a Python ``bool`` is not one here, though it is an ``int`` subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


#: What a config field's annotation asks for, by its written type: the accepted Python types and their words.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"), "int": ((int,), "an integer"), "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"), "dict[str, Any]": ((dict,), "a dict of settings"),
    "tuple[str, ...]": ((tuple, list), "a list of strings"), "tuple[int, ...]": ((tuple, list), "a list of integers")}
#: The written type of a list field's items.
_ITEMS = {"tuple[str, ...]": "str", "tuple[int, ...]": "int"}


def _is(value: Any, kind: str) -> bool:
    """Whether ``value`` is of the written type ``kind`` (a bool is no integer or number here; a list's items
    are checked too)."""
    if not isinstance(value, _FIELD_TYPES[kind][0]) or (kind != "bool" and isinstance(value, bool)):
        return False
    return kind not in _ITEMS or all(_is(item, _ITEMS[kind]) for item in value)


def check_field_types(config: Any) -> None:
    """Every field of the dataclass ``config`` holds a value of its written type (``X | None`` takes None too;
    a bool is no integer or number here): the one check of values that reach a config from JSON or Python."""
    for f in dataclasses.fields(config):
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(config, f.name)
        if (value is None and "None" in kinds) or not all(k in _FIELD_TYPES or k == "None" for k in kinds):
            continue
        ok = any(_is(value, k) for k in kinds if k != "None")
        words = " or ".join(_FIELD_TYPES[k][1] if k != "None" else "null" for k in kinds)
        require(ok, f"{f.name} must be {words}, got {value!r}")


def require_positive_int(name: str, value: int) -> None:
    require(is_int(value) and value > 0,
            f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=1000")


def require_positive(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f"{name} must be a positive finite number, got {value!r}")


def check_writable(path: str | Path, *, folder: bool = False, what: str = "output") -> Path:
    """Refuse, before any work, an output that cannot be written: ``path`` itself (``folder``) or the
    folder a file ``path`` goes into is created and a probe file written and removed there."""
    path = Path(path)
    where = path if folder else path.parent
    try:
        if where.exists() and not where.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".write-test-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
        if not folder and path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
    except OSError as e:
        raise ValueError(f"cannot write to the {what} {path} ({e.strerror or e}); choose a writable --out") from None
    return path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class BackgroundWriter:
    """Files written in order on one background thread while the caller goes on: rank 0's checkpoints (from copies
    of the tensors), sample grids and sample files, so no rank waits inside a collective for rank 0's disk (a
    slow or network file system). A failed write raises at the next :meth:`submit` or at :meth:`close`."""

    def __init__(self, max_checkpoints: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(1, thread_name_prefix="scorelab-writer")
        self.pending: list[tuple[Any, bool]] = []             # (future, holds a copy of the training state)
        self.max_checkpoints = max_checkpoints

    def _collect(self, block_while: Callable[[], bool] = lambda: False) -> None:
        for item in [item for item in self.pending if item[0].done()]:
            self.pending.remove(item)
            item[0].result()
        while self.pending and block_while():
            self.pending.pop(0)[0].result()

    def make_room(self) -> None:
        """Before copying a checkpoint's state: wait while ``max_checkpoints`` copies are still being written
        (the disk slower than training; each copy is the size of weights, EMA and optimizer)."""
        self._collect(lambda: sum(holds for _, holds in self.pending) >= self.max_checkpoints)

    def submit(self, fn: Callable[..., Any], *args: Any, holds_state: bool = False, **kwargs: Any) -> None:
        self._collect()
        self.pending.append((self.pool.submit(fn, *args, **kwargs), holds_state))

    def close(self, raise_errors: bool = True) -> None:
        """Wait for every write (outside any collective); the first error is raised, unless ``raise_errors`` is
        False (another error is already on its way)."""
        try:
            self._collect(lambda: True)
        except Exception:
            if raise_errors:
                raise
        finally:
            self.pool.shutdown()
