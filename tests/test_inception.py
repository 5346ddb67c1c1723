"""The FID Inception-v3: parameter count, state-dict keys, loading, errors, forward shapes."""

from __future__ import annotations

import pickle

import pytest
import torch

from scorelab.evaluation.inception import (
    INCEPTION_FILENAME,
    INCEPTION_SHA256_PREFIX,
    INCEPTION_URL,
    InceptionV3FID,
    check_inception_file,
    inception_features,
    load_inception,
)

# Branch names of each block type, as in torchvision's models/inception.py (InceptionA..E).
A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"]
B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
     "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]
D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
     "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
BLOCKS = {"Mixed_5b": A, "Mixed_5c": A, "Mixed_5d": A, "Mixed_6a": B, "Mixed_6b": C, "Mixed_6c": C, "Mixed_6d": C,
          "Mixed_6e": C, "Mixed_7a": D, "Mixed_7b": E, "Mixed_7c": E}
CONVS_PER_BLOCK = {"Mixed_5b": 7, "Mixed_5c": 7, "Mixed_5d": 7, "Mixed_6a": 4, "Mixed_6b": 10, "Mixed_6c": 10,
                   "Mixed_6d": 10, "Mixed_6e": 10, "Mixed_7a": 6, "Mixed_7b": 9, "Mixed_7c": 9}
BASIC_CONV_KEYS = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]


@pytest.fixture(scope="module")
def model() -> InceptionV3FID:
    torch.manual_seed(0)
    return InceptionV3FID().eval()


def _saved(model: InceptionV3FID, tmp_path, edit=None):
    state = model.state_dict()
    if edit is not None:
        edit(state)
    path = tmp_path / INCEPTION_FILENAME
    torch.save(state, path)
    return path


def test_parameter_count(model: InceptionV3FID) -> None:
    # torchvision's inception_v3() (aux classifier, 1000 classes) has 27,161,264 parameters. Its AuxLogits are
    # conv0 768->128 1x1 (98,304 + BN 256), conv1 128->768 5x5 (2,457,600 + BN 1,536) and fc 768->1000
    # (769,000): 3,326,696 in all. Without them, and with 1008 classes (8 more rows of 2048 weights + 1 bias):
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    assert aux == 3_326_696
    expected = 27_161_264 - aux + 8 * (2048 + 1)
    assert expected == 23_850_960
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_state_dict_keys(model: InceptionV3FID) -> None:
    assert {name: len(branches) for name, branches in BLOCKS.items()} == CONVS_PER_BLOCK
    convs = STEM + [f"{block}.{branch}" for block, branches in BLOCKS.items() for branch in branches]
    assert len(convs) == 94
    expected = {f"{conv}.{key}" for conv in convs for key in BASIC_CONV_KEYS} | {"fc.weight", "fc.bias"}
    state = model.state_dict()
    assert set(state) == expected
    assert len(state) == 94 * 6 + 2
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any("AuxLogits" in k for k in state)


def test_round_trip(model: InceptionV3FID, tmp_path) -> None:
    loaded = load_inception(_saved(model, tmp_path))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)


def test_file_without_batch_counters_loads(model: InceptionV3FID, tmp_path) -> None:
    def drop_counters(state: dict) -> None:
        for key in [k for k in state if k.endswith("num_batches_tracked")]:
            del state[key]

    loaded = load_inception(_saved(model, tmp_path, drop_counters))
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="download it from") as info:
        load_inception(tmp_path / INCEPTION_FILENAME)
    assert INCEPTION_URL in str(info.value) and "scorelab download inception" in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_or_mismatched_state_dict(model: InceptionV3FID, tmp_path) -> None:
    path = _saved(model, tmp_path, lambda s: s.pop("Mixed_7c.branch_pool.conv.weight"))
    with pytest.raises(ValueError, match=r"missing keys: Mixed_7c\.branch_pool\.conv\.weight.*download it from"):
        load_inception(path)

    def torchvision_like(state: dict) -> None:
        state["fc.weight"] = state["fc.weight"][:1000]
        state["fc.bias"] = state["fc.bias"][:1000]
        state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)

    with pytest.raises(ValueError) as info:
        load_inception(_saved(model, tmp_path, torchvision_like))
    msg = str(info.value)
    assert "unexpected keys: AuxLogits.fc.weight" in msg and "wrong-shape keys: fc.weight (1000, 2048)" in msg
    assert "download it from" in msg and "\n" not in msg


class NotWeights:
    """Something only full unpickling could rebuild."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_non_tensor_files(tmp_path) -> None:
    path = tmp_path / INCEPTION_FILENAME
    torch.save(NotWeights(), path)
    with pytest.raises(ValueError, match=r"could not be read as a weights-only state dict \(UnpicklingError\)") as i:
        load_inception(path)
    assert "delete it and download it from" in str(i.value) and "\n" not in str(i.value)
    assert isinstance(i.value.__cause__, pickle.UnpicklingError)

    torch.save({"fc.weight": 3}, path)  # loads under weights_only, but is not a state dict of tensors
    with pytest.raises(ValueError, match="holds a dict, not a state dict of tensors.*download it from"):
        load_inception(path)

    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read"):
        load_inception(path)


def test_check_inception_file(tmp_path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")  # sha256 ba7816bf...
    assert not check_inception_file(path)
    assert INCEPTION_SHA256_PREFIX == "6726825d" and INCEPTION_URL.endswith(INCEPTION_FILENAME)


def test_forward_shapes_grayscale(model: InceptionV3FID) -> None:
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    feats, probs = inception_features(model, images, batch_size=1)
    assert feats.shape == (2, 2048) and probs.shape == (2, 1008)
    assert feats.dtype == probs.dtype == torch.float64 and feats.device.type == "cpu"
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # features follow a ReLU
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected float images"):
        model(torch.zeros(1, 28, 28, 1))


def test_tf_pooling_quirks(model: InceptionV3FID) -> None:
    from scorelab.evaluation.inception import _pool3

    ones = torch.ones(1, 2, 5, 5)
    assert torch.equal(_pool3(ones, "avg"), ones)  # padded zeros are left out of the mean (TF's SAME average pool)
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    assert _pool3(x, "max")[0, 0, 0, 0] == 6.0 and _pool3(x, "avg")[0, 0, 0, 0] == 3.0
    assert (model.Mixed_7b.pool, model.Mixed_7c.pool) == ("avg", "max")  # pytorch-fid's FIDInceptionE_1 / _2
