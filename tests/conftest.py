"""Shared fixtures: tiny random CLIPs of the real architectures. CPU, no network.

The session-wide models are handed to each test inside ``restored``: a test that changes them (tuning
flags, modes, values), even one that fails half-way, leaves them as they were for the next test.
"""

import os
import tempfile

import pytest
import torch

import ueo
from helpers import GeneratedImages, restored

torch.set_num_threads(2)
# The decode cache of every command the tests run (and of their subprocesses) lives in a folder of its own.
os.environ.setdefault("UEO_CACHE_DIR", tempfile.mkdtemp(prefix="ueo-test-cache-"))


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global random state (torch, numpy, random): a draw a test makes
    without a generator of its own is still the same draw in every run and in any order of tests."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_tiny_vit():
    return ueo.load_clip("ueo-tiny-vit", device="cpu", seed=0)


@pytest.fixture(scope="session")
def shared_tiny_rn():
    return ueo.load_clip("ueo-tiny-rn", device="cpu", seed=0)


@pytest.fixture
def tiny_vit(shared_tiny_vit):
    with restored(shared_tiny_vit.model):
        yield shared_tiny_vit


@pytest.fixture
def tiny_rn(shared_tiny_rn):
    with restored(shared_tiny_rn.model):
        yield shared_tiny_rn


@pytest.fixture(scope="session")
def tiny_vit_weights(tmp_path_factory):
    """A checkpoint file of a random tiny ViT, so that separate loads (fit, eval, other processes) agree."""
    from safetensors.torch import save_file

    model = ueo.load_clip("ueo-tiny-vit", device="cpu", seed=3).model
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def labeled_data(tmp_path_factory):
    """Class folders cat, dog (listed) and zebra (an unknown class), 4 JPEGs each."""
    from helpers import make_folder

    return make_folder(tmp_path_factory.mktemp("labeled") / "data")


@pytest.fixture(scope="session")
def labeled_run(labeled_data, tiny_vit_weights, tmp_path_factory):
    """A finished `ueo fit` with a test set (labeled_data: cat, dog known; zebra unknown)."""
    from helpers import quick_fit_args
    from ueo.cli import main

    out = tmp_path_factory.mktemp("labeled-run") / "run"
    assert main(quick_fit_args(tiny_vit_weights, labeled_data, out, "--test", str(labeled_data))) == 0
    return out


@pytest.fixture(scope="session")
def bmp_run(tmp_path_factory, tiny_vit_weights):
    """(data, run): a finished `ueo fit` on BMP class folders (a BMP's size depends only on its dimensions)."""
    from helpers import make_folder, quick_fit_args
    from ueo.cli import main

    data = make_folder(tmp_path_factory.mktemp("bmp") / "data", ext="bmp")
    out = data.parent / "run"
    assert main(quick_fit_args(tiny_vit_weights, data, out, "--test", str(data))) == 0
    return data, out


@pytest.fixture(scope="session")
def generated():
    return GeneratedImages


class Counted:
    """The images decoded from their sources since the test began (ueo.images.reading.DECODED: the decode cache's
    building, entries read back that failed their checksum, images read from their files per batch)."""

    def __init__(self):
        self.start = ueo.images.reading.DECODED.count

    def __getitem__(self, key):
        return ueo.images.reading.DECODED.count - self.start

    def __setitem__(self, key, value):
        self.start = ueo.images.reading.DECODED.count - value


@pytest.fixture
def counted():
    return Counted()
