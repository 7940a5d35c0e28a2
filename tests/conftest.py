"""Shared fixtures: tiny random CLIPs of the real architectures and generated images. CPU, no network."""

import numpy as np
import pytest
import torch
from PIL import Image

import ueo

torch.set_num_threads(2)


class GeneratedImages(torch.utils.data.Dataset):
    """Random-size RGB images of a coloured square on a noisy background; label cycles over ``labels``."""

    def __init__(self, n, labels, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = [labels[i % len(labels)] for i in range(n)]
        self.images = []
        for i in range(n):
            h, w = rng.integers(40, 90, size=2)
            pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            colour = np.array([(37 * (self.labels[i] + 2)) % 256, 90, 200], dtype=np.uint8)
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            pixels[y:y + h // 2, x:x + w // 2] = colour
            self.images.append(Image.fromarray(pixels))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.fixture(scope="session")
def tiny_vit():
    torch.manual_seed(0)
    return ueo.load_clip("ueo-tiny-vit", device="cpu")


@pytest.fixture(scope="session")
def tiny_rn():
    torch.manual_seed(0)
    return ueo.load_clip("ueo-tiny-rn", device="cpu")


@pytest.fixture(scope="session")
def tiny_vit_weights(tmp_path_factory):
    """A checkpoint file of a random tiny ViT, so that separate loads (fit, eval, other processes) agree."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = ueo.load_clip("ueo-tiny-vit", device="cpu").model
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def generated():
    return GeneratedImages


CLASSES = ["cat", "hot_dog", "The_Eiffel_Tower", "aircraft carrier"]
