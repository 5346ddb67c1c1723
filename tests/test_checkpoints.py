"""Checkpoints: exact round trips, atomicity, integrity and configuration checks."""

import json

import pytest
import torch

import scorelab as sl
from scorelab.store import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                  save_checkpoint)
from scorelab.networks import UNet, UNetConfig


def _trained_state():
    torch.manual_seed(0)
    net = UNet(UNetConfig.preset("digits8"))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(4, 1, 8, 8)
    for _ in range(2):
        loss = net(x, torch.tensor([1.0, 2.0, 3.0, 4.0])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, opt


def test_round_trip_restores_identical_outputs_and_optimizer(tmp_path):
    net, opt = _trained_state()
    gen = torch.Generator().manual_seed(5)
    torch.randn(3, generator=gen)
    config = {"network": net.config.to_dict(), "process": sl.DDPM().config()}
    path = save_checkpoint(tmp_path, 2, model=net.state_dict(), config=config, optimizer=opt.state_dict(),
                           ema={k: v * 0.5 for k, v in net.state_dict().items()},
                           tensors={"rng": gen.get_state()}, extra={"loss": 0.25})
    ck = load_checkpoint(tmp_path, expected_config=json.loads(json.dumps(config)))
    assert ck.path == path and ck.step == 2 and ck.extra == {"loss": 0.25}
    # a checkpoint alone rebuilds its model
    rebuilt = UNet(UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ck.config["network"].items()}))
    rebuilt.load_state_dict(ck.model)
    x, c = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 900.0])
    net.eval(), rebuilt.eval()
    assert torch.equal(net(x, c), rebuilt(x, c))
    opt2 = torch.optim.AdamW(rebuilt.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer)
    before, after = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert before.keys() == after.keys()
    for pid in before:
        for key in before[pid]:
            assert torch.equal(torch.as_tensor(before[pid][key]), torch.as_tensor(after[pid][key]))
    resumed = torch.Generator()
    resumed.set_state(ck.tensors["rng"])
    assert torch.equal(torch.randn(3, generator=resumed), torch.randn(3, generator=gen))


def test_keep_last_and_latest_ignore_incomplete_folders(tmp_path):
    net, _ = _trained_state()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model=net.state_dict(), config={}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    (tmp_path / "step-00000050").mkdir()                  # a crash before meta.json was written
    (tmp_path / ".tmp-step-00000060-123").mkdir()         # a crash mid-write
    assert latest_checkpoint(tmp_path).name == "step-00000040"


def test_truncated_edited_and_mismatched_checkpoints_are_refused(tmp_path):
    net, _ = _trained_state()
    path = save_checkpoint(tmp_path, 1, model=net.state_dict(), config={"base_channels": 32})
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated or edited"):
        load_checkpoint(path)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    weights.write_bytes(data)
    with pytest.raises(CheckpointError, match="base_channels: checkpoint has 32, this run asks for 64"):
        load_checkpoint(path, expected_config={"base_channels": 64})
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing-here")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "empty-run")
