"""LPIPS (VGG16) perceptual distance from local weight files, without torchvision.

Two files are needed, both read from paths the user gives (nothing is downloaded):

* torchvision's ImageNet VGG16, ``vgg16-397923af.pth``: either the full model's state dict
  (keys ``features.0.weight`` ... plus ``classifier.*``, ignored) or ``vgg16().features``'s
  (keys ``0.weight`` ...). ``VGG16Features`` is an ``nn.Sequential`` laid out exactly like
  ``torchvision.models.vgg16().features`` so those keys load unchanged.
* the LPIPS v0.1 linear heads, ``vgg.pth`` (as shipped by the lpips package and taming):
  keys ``lin{0..4}.model.1.weight`` of shape (1, C, 1, 1).

The distance is taming's / lpips' ``LPIPS(net="vgg")``: inputs in [-1, 1] are shifted and
scaled to ImageNet statistics, VGG16 features are taken after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3, unit-normalised over channels, squared differences are weighted by the
linear heads, averaged over space and summed over layers. The heads' dropout is not built:
the network is frozen and always evaluated deterministically (taming's training mode leaves
that dropout active, a quirk not reproduced).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: VGG16 configuration "D": conv widths, "M" = 2×2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: Indices into ``VGG16Features`` of the ReLUs LPIPS reads (relu1_2 ... relu5_3).
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
#: ImageNet statistics expressed for inputs in [-1, 1] (lpips' ScalingLayer).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Sequential):
    """``torchvision.models.vgg16().features``: same modules at the same indices."""

    def __init__(self):
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = item
        super().__init__(*layers)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each ReLU in ``LPIPS_TAPS``."""
        outputs = []
        for i, layer in enumerate(self):
            x = layer(x)
            if i in LPIPS_TAPS:
                outputs.append(x)
                if i == LPIPS_TAPS[-1]:
                    break
        return outputs


def _read_state_dict(path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _load_strict(module: nn.Module, state: dict, path, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a {what} state dict: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}"
        )


def load_vgg16_features(path) -> VGG16Features:
    """VGG16 feature stack with torchvision's weights from ``path`` (full model or ``.features``)."""
    state = _read_state_dict(path, "VGG16")
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    net = VGG16Features()
    try:
        _load_strict(net, state, path, "torchvision VGG16")
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path} does not match torchvision's VGG16 layout: {err}") from err
    return net


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance: ``lpips(a, b)`` → (B, 1, 1, 1) for images in [-1, 1].

    Build it with ``LPIPS.from_files(vgg_path, lpips_path)``.
    """

    def __init__(self, net: VGG16Features, heads: nn.ModuleList):
        super().__init__()
        self.net = net
        self.lins = heads
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path, lpips_path) -> LPIPS:
        net = load_vgg16_features(vgg_path)
        state = _read_state_dict(lpips_path, "LPIPS linear-head")
        heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        # lpips names the heads lin{i}.model.1 (model = Sequential(Dropout, Conv2d))
        renamed = {
            k.replace("lin", "", 1).replace(".model.1.", "."): v for k, v in state.items() if k.startswith("lin")
        }
        try:
            _load_strict(heads, renamed, lpips_path, "LPIPS vgg.pth (lin0..lin4)")
        except RuntimeError as err:
            raise ValueError(f"{lpips_path} does not match LPIPS-VGG's linear heads: {err}") from err
        return cls(net, heads)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric: never in training mode

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        taps_a = self.net.taps((a - self.shift) / self.scale)
        taps_b = self.net.taps((b - self.shift) / self.scale)
        distance = 0.0
        for lin, fa, fb in zip(self.lins, taps_a, taps_b):
            diff = (_unit_channels(fa) - _unit_channels(fb)).pow(2)
            distance = distance + lin(diff).mean(dim=(2, 3), keepdim=True)
        return distance


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """lpips' normalize_tensor: divide by the channel-vector norm (eps outside the sqrt)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


__all__ = ["LPIPS", "VGG16Features", "load_vgg16_features"]
