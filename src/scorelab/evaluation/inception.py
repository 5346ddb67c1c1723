"""The Inception-v3 network used for FID and Inception Score, in plain PyTorch.

This is the *FID* variant of Inception-v3 that pytorch-fid, torch-fidelity and
clean-fid use: TensorFlow's 2015-12-05 Inception graph (the network behind the
FID of Heusel et al. 2017 and the Inception Score of Salimans et al. 2016),
with its weights converted to PyTorch by pytorch-fid and published as
``pt_inception-2015-12-05-6726825d.pth`` (:data:`INCEPTION_URL`).

The layout and parameter names are torchvision's ``Inception3`` (no auxiliary
classifier, 1008 output classes), with the TensorFlow graph's quirks that
pytorch-fid reproduces: the average pools in the InceptionA/C/E blocks leave
padded zeros out of the mean (``count_include_pad=False``), and the last block
(``Mixed_7c``) max-pools in its pool branch. torchvision is not needed.

Input convention (as pytorch-fid): float images in ``[0, 1]`` of shape
``(N, C, H, W)`` with ``C`` 1 or 3; they are resized to 299x299 (bilinear,
``align_corners=False``) and scaled to ``[-1, 1]`` inside :class:`InceptionV3FID`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "INCEPTION_FILENAME",
    "INCEPTION_SHA256_PREFIX",
    "INCEPTION_URL",
    "InceptionV3FID",
    "check_inception_file",
    "inception_features",
    "load_inception",
]

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILENAME}"
INCEPTION_SHA256_PREFIX = "6726825d"

_NUM_CLASSES = 1008
_INPUT_SIZE = 299

Size = int | tuple[int, int]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: int = 1, padding: Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool3(x: Tensor, kind: str) -> Tensor:
    """3x3 stride-1 'same' pool: TF-style average (padding not counted) or max."""
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_pool3(x, "avg"))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..e) with factorised 1x7 / 7x1 convolutions."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row = {"kernel": (1, 7), "padding": (0, 3)}
        col = {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool3(x, "avg"))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b with TF average pool, Mixed_7c with ``pool="max"``)."""

    def __init__(self, cin: int, pool: str = "avg") -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(s), self.branch3x3_2b(s),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(_pool3(x, self.pool)),
        ], 1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's FID Inception-v3; ``forward(x)`` returns (pool features (N, 2048), logits (N, 1008)).

    ``x``: float images in ``[0, 1]``, shape ``(N, 1 or 3, H, W)``; one channel is
    repeated to three, then the batch is resized to 299x299 and scaled to ``[-1, 1]``.
    Parameters start randomly initialised; use :func:`load_inception` for the real weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, _NUM_CLASSES)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
            raise ValueError(
                f"expected float images in [0, 1] of shape (N, 1 or 3, H, W), got {x.dtype} {tuple(x.shape)}; "
                "convert uint8 with x.float() / 255 and channels-last with x.permute(0, 3, 1, 2)"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(_INPUT_SIZE, _INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # N x 64 x 147 x 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # N x 192 x 71 x 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ends at N x 2048 x 8 x 8
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return features, self.fc(features)


def check_inception_file(path: str | Path) -> bool:
    """Whether the SHA-256 of ``path`` starts with :data:`INCEPTION_SHA256_PREFIX`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(INCEPTION_SHA256_PREFIX)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> InceptionV3FID:
    """Build :class:`InceptionV3FID` with the weights file ``weights``, frozen, in eval mode on ``device``.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling)
    and loaded strictly; a missing, unreadable or mismatched file raises a one-line
    ``FileNotFoundError`` / ``ValueError`` that says what to do.
    """
    path = Path(weights)
    fetch = f"download it from {INCEPTION_URL} (about 91 MB) or run `scorelab download inception`"
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path}: {fetch}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle that weights_only refuses
        raise ValueError(
            f"{path} could not be read as a weights-only state dict ({type(exc).__name__}); "
            f"it should be {INCEPTION_FILENAME}: delete it and {fetch}"
        ) from exc
    if not (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())):
        raise ValueError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors; "
            f"it should be {INCEPTION_FILENAME}: delete it and {fetch}"
        )
    model = InceptionV3FID()
    expected = model.state_dict()
    state = dict(state)
    for key in expected:  # files saved before BatchNorm counted batches lack these buffers
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = expected[key].clone()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{name} keys: {_few(keys)}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong-shape", shapes)) if keys]
    if problems:
        raise ValueError(
            f"{path} is not the FID Inception-v3 state dict ({'; '.join(problems)}); "
            f"it should be {INCEPTION_FILENAME}: delete it and {fetch}"
        )
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval().to(device)


@torch.no_grad()
def inception_features(model: nn.Module, images: Tensor, batch_size: int = 50) -> tuple[Tensor, Tensor]:
    """Pool features (N, 2048) and class probabilities (N, 1008), both float64 on the CPU.

    The probabilities are the softmax of the logits *without* the final layer's
    bias, as OpenAI's Inception Score code (Salimans et al. 2016) and
    torch-fidelity compute them.

    ``images``: float in ``[0, 1]``, shape ``(N, 1 or 3, H, W)``, on any device; they
    are moved batch by batch to the model's device and evaluated without gradients.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    device = next(model.parameters()).device
    feats, probs = [], []
    for i in range(0, images.shape[0], batch_size):
        f, _ = model(images[i:i + batch_size].to(device=device, dtype=torch.float32))
        logits = f.double() @ model.fc.weight.double().T
        feats.append(f.double().cpu())
        probs.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)
