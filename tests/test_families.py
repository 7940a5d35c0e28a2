"""Every CLIP family that open_clip builds: prompt features equal the model's own encode_text, the tuning
rule selects the norm affines, one adaptation step works and leaves the model as it was.

Large models are tested as shrunk copies of their configurations (a 2-layer text tower, 2 vision layers,
a small member of the same timm family): the code paths are the same. Families whose tokenizer needs
the `transformers` package and a download (SigLIP, SigLIP2, CLIPA, worldwide) get a stand-in tokenizer
with their tokenizer's layout (T5: no start token, end 1, pad 0; Gemma: start 2, end 1; BERT with the
separator stripped: start 101, no end token; mT5: end 1), so that the tower code is tested offline.
"""

import copy
import json
from typing import ClassVar

import open_clip
import pytest
import torch
from PIL import Image
from timm.models import VisionTransformer, register_model

import ueo
from ueo.clip import ClipBundle
from ueo.prompts import PromptLearner, prompt_text
from ueo.tuning import is_norm, resolve_rule, tunable_parameters

NAMES = ["cat", "hot_dog", "The_Eiffel_Tower", "aircraft carrier"]
# family: (open_clip name, stand-in tokenizer layout (None: open_clip's own), changes to the image tower:
# fewer/narrower layers, a smaller member of the same timm family, smaller inputs)
FAMILIES = {
    "ViT-B-32": ("ViT-B-32", None, dict(layers=2, width=256, image_size=96)),
    "ViT-B-16-quickgelu": ("ViT-B-16-quickgelu", None, dict(layers=2, width=256, image_size=64)),
    "ViT-L-14": ("ViT-L-14", None, dict(layers=2, width=256, image_size=56)),
    "RN101": ("RN101", None, dict(width=32, image_size=64)),
    "ConvNeXt": ("convnext_base", None, dict(timm_model_name="convnext_atto", image_size=64)),
    "Swin": ("swin_base_patch4_window7_224", None, dict(timm_model_name="swin_tiny_patch4_window7_224")),
    "SigLIP": ("ViT-B-16-SigLIP", "t5", dict(timm_model_name="vit_small_siglip_64_stand_in", image_size=64)),
    "SigLIP2": ("ViT-B-16-SigLIP2", "gemma", dict(timm_model_name="vit_small_siglip_64_stand_in", image_size=64)),
    "EVA02": ("EVA02-B-16", None, dict(timm_model_name="eva02_tiny_patch14_224")),
    "MobileCLIP": ("MobileCLIP-S1", None, dict(image_size=64)),
    "CoCa": ("coca_ViT-B-32", None, dict(layers=2, width=256, image_size=96)),
    "ViTamin": ("ViTamin-S", None, {}),
    "PE-Core": ("PE-Core-T-16-384", None, {}),
    "CLIPA": ("ViT-L-14-CLIPA", "bert", dict(layers=2, width=256, image_size=56)),
    "worldwide": ("ViT-L-14-worldwide", "mt5", dict(layers=2, width=256, image_size=56)),
}


@register_model
def vit_small_siglip_64_stand_in(pretrained=False, **kwargs):
    """timm's SigLIP image tower (no class token, attention-pool head, width 768), 2 layers, 64 px."""
    settings = dict(
        img_size=64, patch_size=16, embed_dim=768, depth=2, num_heads=12, class_token=False, global_pool="map"
    )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return VisionTransformer(**{**settings, **kwargs})


class StandInTokenizer:
    """Content ids from CLIP's BPE (mapped into the model's vocabulary), laid out like a tokenizer family."""

    LAYOUTS: ClassVar[dict] = {"t5": (None, 1), "gemma": (2, 1), "bert": (101, None), "mt5": (None, 1)}  # start, end

    def __init__(self, layout, context_length, vocab_size):
        self.start, self.end = self.LAYOUTS[layout]
        self.context_length, self.vocab_size = context_length, vocab_size
        self.bpe = open_clip.tokenizer.SimpleTokenizer()

    def __call__(self, texts):
        result = torch.zeros(len(texts), self.context_length, dtype=torch.long)  # pad 0
        for row, text in enumerate(texts):
            ids = [1000 + i % (self.vocab_size - 1000) for i in self.bpe.encode(text)]
            ids = ([self.start] if self.start is not None else []) + ids + ([self.end] if self.end is not None else [])
            ids = ids[: self.context_length]
            result[row, : len(ids)] = torch.tensor(ids)
        return result


def shrunk_config(name, vision_changes):
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    text = cfg["text_cfg"]
    text.pop("hf_tokenizer_name", None)
    text.update(layers=2, width=64, heads=2)
    if "multimodal_cfg" in cfg:
        cfg["multimodal_cfg"].update(layers=1, width=64, heads=2)
    cfg["vision_cfg"].update(vision_changes)
    return cfg


_BUILT = {}


def build(family, tmp_path_factory):
    """A ClipBundle of the family's shrunk configuration, random weights (norms perturbed so that the image
    features depend on the image)."""
    if family not in _BUILT:
        name, layout, vision_changes = FAMILIES[family]
        cfg = shrunk_config(name, vision_changes)
        path = tmp_path_factory.mktemp("configs") / f"shrunk-{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
        torch.manual_seed(0)
        model = open_clip.create_model(f"shrunk-{name}", pretrained=None).eval()
        with torch.no_grad():
            for module in model.visual.modules():
                if is_norm(module) and getattr(module, "weight", None) is not None:
                    module.weight.mul_(1 + 0.3 * torch.randn_like(module.weight))
        text_cfg = cfg["text_cfg"]
        if layout is None:
            tokenizer = open_clip.get_tokenizer(f"shrunk-{name}")
        else:
            tokenizer = StandInTokenizer(layout, text_cfg.get("context_length", 77), text_cfg.get("vocab_size", 49408))
        _BUILT[family] = ClipBundle(model, tokenizer, f"shrunk-{name}")
    return _BUILT[family]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_features_equal_the_models_own_encode_text(family, tmp_path_factory):
    bundle = build(family, tmp_path_factory)
    learner = PromptLearner(bundle, NAMES)
    with torch.no_grad():
        got = learner.text_features()
        want = bundle.model.encode_text(bundle.tokenizer([prompt_text(n) for n in NAMES]), normalize=True)
    assert learner.n_ctx == 4
    assert torch.allclose(got, want.float(), atol=1e-5), (got - want).abs().max()


def independent_norm_count(visual):
    """Every affine parameter of every normalisation module, counted without ueo's rule code."""
    total = 0
    for module in visual.modules():
        if type(module).__name__.lower().find("norm") >= 0 or isinstance(
            module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)
        ):
            total += sum(p.numel() for p in module.parameters(recurse=False))
    return total


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_default_rule_tunes_norms_and_one_step_adapts(family, tmp_path_factory):
    bundle = build(family, tmp_path_factory)
    model = bundle.model
    rule = resolve_rule(model, "auto")
    tuned = tunable_parameters(model, "auto")
    official = tunable_parameters(model, "official")
    assert tuned and rule == ("official" if official else "all-norms")
    if rule == "all-norms":
        assert sum(p.numel() for p in tuned.values()) == independent_norm_count(model.visual)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    size = bundle.image_size
    data = [(Image.fromarray((torch.rand(size // 2, size // 3, 3) * 255).byte().numpy()), i % 3) for i in range(4)]
    result = ueo.fit(
        bundle,
        NAMES[:2],
        data,
        test=data,
        epochs=1,
        batch_size=2,
        lr_prompt=0.5,
        lr_norm=0.5,
        eval_train=False,
        fast=False,
    )
    assert result.rule == rule and all(torch.isfinite(torch.tensor([h["loss"] for h in result.history])))
    moved = [
        name
        for name, value in result.adapted.tensors.items()
        if not torch.equal(value, before[name] if name != "prompt.ctx" else PromptLearner(bundle, NAMES[:2]).ctx)
    ]
    assert "prompt.ctx" in moved and len(moved) > 1, moved
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is restored
    metrics, _ = ueo.evaluate(bundle, None, data, adapted=result.adapted, fast=False)
    assert metrics["pacc"] == pytest.approx(result.metrics["adapted"]["pacc"])


def test_a_hugging_face_text_tower_is_refused_with_a_reason():
    from ueo import ModelUnavailableError
    from ueo.prompts import TextTower

    class HFText(torch.nn.Module):
        pass

    model = torch.nn.Module()
    model.text = HFText()
    with pytest.raises(ModelUnavailableError, match=r"HFText \(a Hugging Face text model\)"):
        TextTower.of(model)


def test_an_official_rule_that_selects_nothing_says_which_rule_would(tmp_path_factory):
    bundle = build("ConvNeXt", tmp_path_factory)
    with pytest.raises(ueo.ConfigError, match=r"rule 'all-norms' selects [\d,]+"):
        ueo.configure_tuning(bundle.model, PromptLearner(bundle, NAMES), "both", "official")
    bundle.model.requires_grad_(False)


# Tuned norm-affine values of the full architectures under the default rule ("auto"), built on the meta
# device (no memory, no time). Where auto falls back to all-norms, the count is also checked against an
# independent count of every normalisation module's affine parameters.
FULL_COUNTS = {
    "ViT-B-32": ("official", 39_936),
    "ViT-B-16": ("official", 39_936),
    "ViT-L-14": ("official", 102_400),
    "RN50": ("official", 45_568),
    "RN101": ("official", 97_792),
    "convnext_base": ("all-norms", 40_192),
    "swin_base_patch4_window7_224": ("all-norms", 57_600),
    "ViT-B-16-SigLIP": ("all-norms", 39_936),
    "ViT-B-16-SigLIP2": ("all-norms", 39_936),
    "EVA02-B-16": ("all-norms", 105_984),
    "MobileCLIP-S1": ("official", 55_680),
    "coca_ViT-B-32": ("official", 41_984),
    "ViTamin-S": ("all-norms", 34_560),
    "PE-Core-T-16-384": ("all-norms", 10_368),
    "ViT-L-14-CLIPA": ("official", 100_352),
    "ViT-L-14-worldwide": ("official", 102_400),
}


@pytest.mark.parametrize("name", list(FULL_COUNTS))
def test_tuned_parameter_counts_of_the_full_architectures(name):
    model = open_clip.create_model(name, pretrained=None, device="meta")
    rule, count = FULL_COUNTS[name]
    assert resolve_rule(model, "auto") == rule
    assert sum(p.numel() for p in tunable_parameters(model, "auto").values()) == count
    if rule == "all-norms":
        assert count == independent_norm_count(model.visual)
