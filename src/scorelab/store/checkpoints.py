"""Checkpoints as data: safetensors for tensors, JSON for everything else. Nothing is unpickled.

A checkpoint is a folder ``step-00001234/`` holding ``model.safetensors``,
optionally ``ema.safetensors``, ``optimizer.safetensors`` and
``state.safetensors`` (RNG states and other tensors), and ``meta.json``
(step, config, the optimizer's non-tensor structure, anything JSON, and the
SHA-256 of every file). It is written into a temporary folder, flushed to
disk, then renamed into place, so a crash never leaves a half-written
checkpoint under a final name; :func:`latest_checkpoint` only ever returns
complete ones, and :func:`load_checkpoint` verifies every checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .._util import is_int, require

__all__ = ["config_differences", "Checkpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
           "checkpoint_step", "flatten_optimizer_state", "unflatten_optimizer_state", "CheckpointError"]

_NAME = re.compile(r"^step-(\d{8,})$")
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not match what is asked of it."""


@dataclass
class Checkpoint:
    """What a checkpoint holds."""

    path: Path
    step: int
    config: dict[str, Any]
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    tensors: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able skeleton."""
    tensors: dict[str, Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, entry in state_dict["state"].items():
        skeleton["state"][str(pid)] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
                skeleton["state"][str(pid)][key] = None
            else:
                skeleton["state"][str(pid)][key] = value
    return tensors, skeleton


def unflatten_optimizer_state(tensors: dict[str, Tensor], skeleton: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer_state`."""
    state = {}
    for pid, entry in sorted(skeleton["state"].items(), key=lambda kv: int(kv[0])):
        state[int(pid)] = {key: (tensors[f"{pid}.{key}"] if value is None else value) for key, value in entry.items()}
    return {"state": state, "param_groups": skeleton["param_groups"]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, step: int, *, model: dict[str, Tensor], config: dict[str, Any],
                    ema: dict[str, Tensor] | None = None, optimizer: dict[str, Any] | None = None,
                    tensors: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None,
                    keep_last: int | None = None) -> Path:
    """Write ``directory/step-XXXXXXXX`` atomically and return its path; keep the newest ``keep_last``."""
    require(is_int(step) and step >= 0, f"step must be a non-negative integer, got {step!r}")
    require(keep_last is None or (is_int(keep_last) and keep_last >= 1),
            f"keep_last must be a positive integer or None, got {keep_last!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, dict[str, Tensor]] = {"model": _contiguous(model)}
    if ema is not None:
        files["ema"] = _contiguous(ema)
    skeleton = None
    if optimizer is not None:
        files["optimizer"], skeleton = flatten_optimizer_state(optimizer)
    if tensors:
        files["state"] = _contiguous(tensors)
    checksums = {}
    for name, content in files.items():
        path = tmp / f"{name}.safetensors"
        save_file(content, str(path))
        checksums[path.name] = _sha256(path)
    meta = {"format": FORMAT_VERSION, "step": step, "config": config, "optimizer": skeleton,
            "extra": extra or {}, "files": checksums}
    with open(tmp / "meta.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for name in checksums:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():                       # re-saving a step: move the old one aside first
        old = directory / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(directory)
    if keep_last is not None:
        for stale in list_checkpoints(directory)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory`` (a ``meta.json`` present), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint folder ``step-XXXXXXXX`` holds, from its name."""
    match = _NAME.match(Path(path).name)
    require(match is not None, f"{path} is not a checkpoint folder (step-XXXXXXXX)")
    return int(match.group(1))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def config_differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
    """Each field where two (nested) configs differ, as ``'a.b: checkpoint has X, this run asks for Y'``."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(saved) | set(expected)):
            out += config_differences(saved.get(key, "<absent>"), expected.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if saved == expected else [f"{prefix[:-1]}: checkpoint has {saved!r}, this run asks for {expected!r}"]


def load_checkpoint(path: str | Path, expected_config: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint folder, or the newest one in a folder of checkpoints or a run's folder.

    Raises :class:`CheckpointError` for a missing or incomplete checkpoint, a
    file whose checksum does not match (truncated or edited), or a config that
    differs from ``expected_config`` (naming each differing field).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if path.is_dir() and not (path / "meta.json").exists() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"                          # a run's folder
    if path.is_dir() and not (path / "meta.json").exists():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} holds no complete checkpoint (no step-*/meta.json); check the path")
        path = latest
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: {meta_path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); the checkpoint is damaged") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format')!r}; this scorelab reads {FORMAT_VERSION}")
    for name, digest in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; the checkpoint is incomplete")
        if _sha256(file) != digest:
            raise CheckpointError(f"{file} does not match its checksum in meta.json: it was truncated or "
                                  "edited; resume from an earlier checkpoint")
    if expected_config is not None:
        diffs = config_differences(meta["config"], expected_config)
        if diffs:
            raise CheckpointError(f"checkpoint {path} was made with another configuration: " + "; ".join(diffs[:5]))

    def read(name: str) -> dict[str, Tensor] | None:
        file = path / f"{name}.safetensors"
        return load_file(str(file), device=str(map_location)) if f"{name}.safetensors" in meta["files"] else None

    optimizer = None
    if meta.get("optimizer") is not None:
        optimizer = unflatten_optimizer_state(read("optimizer") or {}, meta["optimizer"])
    return Checkpoint(path=path, step=int(meta["step"]), config=meta["config"], model=read("model"),
                      ema=read("ema"), optimizer=optimizer, tensors=read("state") or {}, extra=meta["extra"])
