"""What the Python classifier takes: paths, PIL images or tensor batches, each scored as `ueo predict`
scores it; bad inputs named, not raised raw."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import odd_images
from ueo.data.folders import read_folder


def test_a_path_and_the_same_image_as_pil_decide_alike(bmp_run, tmp_path, tiny_vit_weights):
    import ueo

    _, run_dir = bmp_run
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    paths = odd_images(tmp_path / "odd")
    from_files = classifier.similarities(paths).cosines
    from_pil = classifier.similarities([Image.open(p) for p in paths]).cosines
    assert np.allclose(from_files.numpy(), from_pil.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "images, message",
    [
        (None, "got NoneType"),
        (np.zeros((4, 32, 32, 3), dtype=np.uint8), "PIL.Image.fromarray"),
        (7, "got int"),
        (["a.jpg", 3], "image 1 is a int"),
        ("torch-shape", "got torch.float32 \\[3, 20, 20\\]"),
        ("torch-nan", "NaN"),
        ("torch-2d", "\\[B, 3, S, S\\] or \\[3, S, S\\]"),
    ],
)
def test_bad_inputs_to_the_classifier_are_named(bmp_run, tiny_vit_weights, images, message):

    import ueo

    _, run_dir = bmp_run
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    made = {
        "torch-shape": lambda: torch.zeros(2, 3, 20, 20),
        "torch-nan": lambda: torch.full((2, 3, 32, 32), float("nan")),
        "torch-2d": lambda: torch.zeros(32, 32),
    }
    if isinstance(images, str) and images in made:
        images = made[images]()
    with pytest.raises(ueo.DataError, match=message):
        classifier.predict(images)


def test_float16_and_float64_tensor_batches_score_as_float32(bmp_run, tiny_vit_weights):
    """Found by benchmarks/hostile_probe.py: a float64 batch passed the checks, then failed in the model."""

    import ueo

    _, run_dir = bmp_run
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    size = classifier.bundle.image_size
    batch = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = classifier.similarities(batch).cosines
    assert torch.equal(classifier.similarities(batch.double()).cosines, reference)
    assert torch.allclose(classifier.similarities(batch.half()).cosines, reference, atol=5e-3)
    _, outputs = ueo.evaluate(classifier.bundle, [(image.double(), 0) for image in batch], class_names=["cat", "dog"])
    assert outputs.cosines.shape == (3, 2)


def test_one_unreadable_file_among_many_is_named_and_generators_work(bmp_run, tmp_path, tiny_vit_weights):
    import ueo

    data, run_dir = bmp_run
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    paths = read_folder(data, ["cat", "dog"]).paths
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:40])
    with pytest.raises(ueo.DataError, match=r"broken\.jpg: unreadable image"):
        classifier.predict([*paths, broken])
    assert len(classifier.predict(p for p in paths)) == len(paths)
