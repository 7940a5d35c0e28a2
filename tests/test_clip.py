import json

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ueo
from ueo import WeightsUnavailableError
from ueo.errors import ConfigError


@pytest.mark.parametrize("fixture, norm", [("tiny_vit", torch.nn.LayerNorm), ("tiny_rn", torch.nn.BatchNorm2d)])
def test_tiny_configs_are_the_real_architectures(request, fixture, norm):
    bundle = request.getfixturevalue(fixture)
    assert isinstance(bundle.model, open_clip.CLIP)
    assert any(isinstance(m, norm) for m in bundle.model.visual.modules())
    image = Image.new("RGB", (70, 50), (200, 10, 10))
    for transform in (bundle.train_transform, bundle.eval_transform):
        x = transform(image)
        assert x.shape == (3, bundle.image_size, bundle.image_size)
    assert bundle.tokenizer(["a photo of a cat."]).shape == (1, 77)
    assert bundle.name == {"tiny_vit": "ueo-tiny-vit", "tiny_rn": "ueo-tiny-rn"}[fixture] and bundle.pretrained is None


def test_eval_transform_is_resize_and_center_crop(tiny_vit):
    image = Image.new("RGB", (64, 32), (255, 255, 255))
    x = tiny_vit.eval_transform(image)
    mean = torch.tensor(tiny_vit.model.visual.preprocess_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny_vit.model.visual.preprocess_cfg["std"]).view(3, 1, 1)
    assert torch.allclose(x, ((1 - mean) / std).expand_as(x), atol=1e-5)


def test_train_transform_augments(tiny_vit):
    pixels = torch.arange(48 * 48 * 3, dtype=torch.uint8).reshape(48, 48, 3).numpy()
    image = Image.fromarray(pixels)
    torch.manual_seed(0)
    views = [tiny_vit.train_transform(image) for _ in range(4)]
    assert not all(torch.equal(views[0], v) for v in views[1:])


def test_checkpoint_file_and_local_dir_load_the_same_weights(tmp_path, tiny_vit):
    state = {k: v.contiguous() for k, v in tiny_vit.model.state_dict().items()}
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(path))
    from_file = ueo.load_clip("ueo-tiny-vit", pretrained=str(path), device="cpu")
    assert torch.equal(from_file.model.visual.ln_post.weight, tiny_vit.model.visual.ln_post.weight)
    assert torch.equal(from_file.model.token_embedding.weight, tiny_vit.model.token_embedding.weight)

    config = json.loads((ueo.model.clip.CONFIG_DIR / "ueo-tiny-vit.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    from_dir = ueo.load_clip(f"local-dir:{tmp_path}", device="cpu")
    assert torch.equal(from_dir.model.positional_embedding, tiny_vit.model.positional_embedding)


def test_unknown_tag_is_a_clear_error():
    with pytest.raises(WeightsUnavailableError, match="neither a file nor a known tag"):
        ueo.load_clip("ueo-tiny-vit", pretrained="no-such-tag")
    with pytest.raises(ConfigError, match="Unknown model"):
        ueo.load_clip("no-such-model")


def test_download_failure_says_how_to_supply_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        ueo.load_clip("RN50", pretrained="openai", device="cpu")
    message = str(info.value)
    assert "pretrained='/path/to/" in message and "local-dir:" in message and "HF_HUB_OFFLINE" in message

    monkeypatch.setattr(open_clip.factory, "_get_hf_config", offline)
    with pytest.raises(WeightsUnavailableError, match="Could not obtain"):
        ueo.load_clip("hf-hub:org/model", device="cpu")


def test_random_weights_are_a_function_of_the_seed():
    torch.manual_seed(123)  # the global RNG does not matter
    a = ueo.load_clip("ueo-tiny-vit", device="cpu", seed=5).model.state_dict()
    torch.manual_seed(456)
    b = ueo.load_clip("ueo-tiny-vit", device="cpu", seed=5).model.state_dict()
    c = ueo.load_clip("ueo-tiny-vit", device="cpu", seed=6).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_a_model_that_needs_a_missing_package_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    with pytest.raises(ueo.ModelUnavailableError, match=r"needs the Python package 'transformers'.*pip install"):
        ueo.load_clip("ViT-B-16-SigLIP", device="cpu")


@pytest.mark.parametrize("name", ["xlm-roberta-base-ViT-B-32", "nllb-clip-base"])
def test_a_hugging_face_text_tower_is_refused_before_anything_is_built(name):
    with pytest.raises(ueo.ModelUnavailableError, match=r"Hugging Face text model .* as its text tower"):
        ueo.load_clip(name, device="cpu")


def test_offline_fails_fast_from_the_cache_only(monkeypatch):
    """No network: the download is tried in Hugging Face's offline mode (the cache only, no retries)."""
    from huggingface_hub import constants

    seen = []

    def download(*args, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not in the cache")

    monkeypatch.setattr(ueo.model.clip, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", download)
    with pytest.raises(WeightsUnavailableError, match=r"no network \(huggingface.co cannot be reached\)") as info:
        ueo.load_clip("RN50", pretrained="openai", device="cpu")
    assert seen == [True] and constants.HF_HUB_OFFLINE is False  # offline only for that call
    assert "open_clip_pytorch_model.bin of the Hugging Face repository timm/resnet50_clip.openai" in str(info.value)
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in info.value.cli_advice


def test_weights_that_are_not_a_checkpoint_are_clear_errors(tmp_path):
    import pickle

    marker = tmp_path / "the pickle ran"

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    (tmp_path / "notes.txt").write_text("not weights")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    for name in ("notes.txt", "evil.pt"):
        with pytest.raises(WeightsUnavailableError, match="Is it an open_clip checkpoint"):
            ueo.load_clip("ueo-tiny-vit", pretrained=str(tmp_path / name), device="cpu")
    assert not marker.exists()  # the pickle was refused, not executed
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        ueo.load_clip("ueo-tiny-vit", pretrained=str(tmp_path / "missing.safetensors"), device="cpu")
    with pytest.raises(WeightsUnavailableError, match="Known tags: toyworld"):
        ueo.load_clip("ueo-toy-rn", pretrained="no-such-tag", device="cpu")
