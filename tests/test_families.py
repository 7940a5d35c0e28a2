"""Every CLIP family that open_clip builds, through the front door: ``ueo.load_clip`` and ``ueo fit`` load it,
ueo's zero-shot cosines equal open_clip's own encode_image / encode_text, the tuning rule selects the
norm affines, one adaptation step works and leaves the model as it was.

Large models are tested as shrunk copies of their configurations (a 2-layer text tower, 2 vision layers,
a small member of the same timm family, a small vocabulary), saved as open_clip folders (``local-dir:``:
open_clip_config.json + random weights), which is how a user brings a model offline: the code paths are
the real ones. Families whose tokenizer is a Hugging Face one (SigLIP, SigLIP2, CLIPA, worldwide) get a
word-level tokenizer in the folder with their tokenizer's layout (T5: no start token, end 1, pad 0; Gemma:
start 2, end 1; BERT: start 101, separator 102 stripped; mT5: end 1), loaded by open_clip's own
HFTokenizer through ``transformers``.
"""

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import save_file
from timm.models import VisionTransformer, register_model

import ueo
from helpers import photo, write_photos
from ueo.cli import main
from ueo.model.prompts import PromptLearner, prompt_text
from ueo.model.tuning import is_norm, resolve_rule, tunable_parameters

pytestmark = pytest.mark.slow  # whole fits, exports and subprocess runs (`make test-quick` leaves them out)

NAMES = ["cat", "hot_dog", "The_Eiffel_Tower", "aircraft carrier"]
# family: (open_clip name, Hugging Face tokenizer layout (None: open_clip's own), changes to the image tower:
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
# (special tokens by id, the template of one text, the tokenizer_config.json roles)
LAYOUTS = {
    "t5": ({"<pad>": 0, "</s>": 1, "<unk>": 2}, "$A </s>", dict(pad_token="<pad>", eos_token="</s>")),
    "mt5": ({"<pad>": 0, "</s>": 1, "<unk>": 2}, "$A </s>", dict(pad_token="<pad>", eos_token="</s>")),
    "gemma": (
        {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3},
        "<bos> $A <eos>",
        dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"),
    ),
    "bert": (
        {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102},
        "[CLS] $A [SEP]",
        dict(pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"),
    ),
}
VOCABULARY = 2000  # the vocabulary of the shrunk text towers with a word-level tokenizer


@register_model
def vit_small_siglip_64_stand_in(pretrained=False, **kwargs):
    """timm's SigLIP image tower (no class token, attention-pool head, width 768), 2 layers, 64 px."""
    settings = dict(
        img_size=64, patch_size=16, embed_dim=768, depth=2, num_heads=12, class_token=False, global_pool="map"
    )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return VisionTransformer(**{**settings, **kwargs})


def write_tokenizer(folder: Path, layout: str) -> None:
    """A word-level Hugging Face tokenizer with ``layout``'s special tokens, for the words ueo's prompts use."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials, template, roles = LAYOUTS[layout]
    words = sorted(
        {w for n in NAMES + ["dog", "a photo of a"] for w in prompt_text(n).lower().replace(".", " ").split()}
    )
    vocab = {**specials, **{w: 1000 + i for i, w in enumerate(words)}}
    unknown = next(t for t in specials if "unk" in t.lower())
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in specials if t in template]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, specials[t]) for t in used]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": unknown, "model_max_length": 512, **roles}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def shrunk_config(name, vision_changes, layout):
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    text = cfg["text_cfg"]
    text.update(layers=2, width=64, heads=2)
    if layout is not None:
        text["hf_tokenizer_name"] = "the tokenizer in this folder"  # (local-dir: reads it from the folder)
        text["vocab_size"] = VOCABULARY
    if "multimodal_cfg" in cfg:
        cfg["multimodal_cfg"].update(layers=1, width=64, heads=2)
    cfg["vision_cfg"].update(vision_changes)
    return cfg


_FOLDERS: dict = {}


def family_folder(family, tmp_path_factory) -> str:
    """``local-dir:`` + an open_clip folder of the family's shrunk configuration: its config, random weights
    (norms perturbed so that the image features depend on the image) and, where the family's tokenizer is
    a Hugging Face one, a tokenizer with its layout."""
    if family not in _FOLDERS:
        name, layout, vision_changes = FAMILIES[family]
        cfg = shrunk_config(name, vision_changes, layout)
        folder = tmp_path_factory.mktemp(f"family-{family}")
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
        if layout is not None:
            write_tokenizer(folder, layout)
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{folder}", pretrained=None, load_weights=False).eval()
        with torch.no_grad():
            for module in model.visual.modules():
                if is_norm(module) and getattr(module, "weight", None) is not None:
                    module.weight.mul_(1 + 0.3 * torch.randn_like(module.weight))
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors")
        )
        _FOLDERS[family] = f"local-dir:{folder}"
    return _FOLDERS[family]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zero_shot_cosines_equal_open_clips_own(family, tmp_path_factory):
    """ueo.evaluate's cosines (ueo's prompt learner at its initial context, ueo's views) against open_clip's
    preprocess + encode_image + tokenizer + encode_text, for a model loaded with ueo.load_clip."""
    bundle = ueo.load_clip(family_folder(family, tmp_path_factory), device="cpu")
    size = bundle.image_size
    images = [photo(3 * size, 2 * size, seed=i) for i in range(3)] + [photo(size // 2, size, seed=7)]
    data = [(image, -1) for image in images]
    _, plain = ueo.evaluate(
        bundle, data, class_names=NAMES, fast=False
    )  # open_clip's own preprocessing: the same pixels
    _, fast = ueo.evaluate(bundle, data, class_names=NAMES)  # the default views (to the resampler's rounding)
    model = bundle.model
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    with torch.no_grad():
        features = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        text = F.normalize(model.encode_text(bundle.tokenizer([prompt_text(n) for n in NAMES])), dim=-1)
    assert PromptLearner(bundle, NAMES).n_ctx == 4
    want = features @ text.T
    assert torch.allclose(plain.cosines, want, atol=1e-5), (plain.cosines - want).abs().max()
    assert torch.allclose(fast.cosines, want, atol=1e-3), (fast.cosines - want).abs().max()


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
    bundle = ueo.load_clip(family_folder(family, tmp_path_factory), device="cpu")
    model = bundle.model
    rule = resolve_rule(model, "auto")
    tuned = tunable_parameters(model, "auto")
    bn_ln = tunable_parameters(model, "bn-ln")
    assert tuned and rule == ("bn-ln" if bn_ln else "all-norms")
    if rule == "all-norms":
        assert sum(p.numel() for p in tuned.values()) == independent_norm_count(model.visual)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    size = bundle.image_size
    data = [(photo(size // 2 + 3 * i, size // 3 + 5 * i, seed=i), i % 3) for i in range(4)]
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
    # the model is restored (CoCa's random text decoder holds uninitialised memory, NaN at times: equal_nan)
    same = [torch.allclose(before[k], v, rtol=0, atol=0, equal_nan=True) for k, v in model.state_dict().items()]
    assert all(same)
    metrics, _ = ueo.evaluate(bundle, data, adapted=result.adapted, fast=False)
    assert metrics["pacc"] == pytest.approx(result.metrics["adapted"]["pacc"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_fits_on_the_command_line(family, tmp_path_factory, tmp_path):
    data = tmp_path_factory.getbasetemp() / "family-photos"
    if not data.exists():
        write_photos(data, sizes=[(120, 90), (90, 120), (200, 60), (60, 200)])
    out = tmp_path / "run"
    model = family_folder(family, tmp_path_factory)
    argv = ["fit", "--model", model, "--data", str(data), "--classes", "cat,dog", "--epochs", "1", "--batch-size", "4"]
    assert main([*argv, "--device", "cpu", "--lr-prompt", "0.5", "--lr-norm", "0.5", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_adaptation_images"] == 8 and metrics["tuning"]["parameters"]["norm"] > 0
    assert metrics["predictions"]["num_images"] == 8


@pytest.mark.parametrize("name", ["EVA02-B-16", "MobileCLIP-S1", "coca_ViT-B-32", "ViTamin-S", "PE-Core-T-16-384"])
def test_the_full_configurations_load_with_random_weights(name):
    """The real configurations (no download: random weights) load through ueo.load_clip and take prompts."""
    bundle = ueo.load_clip(name, pretrained=None, device="cpu")
    learner = PromptLearner(bundle, NAMES)
    with torch.no_grad():
        assert learner.text_features().shape[0] == len(NAMES)
    assert bundle.identity == {"random": 0}


@pytest.mark.parametrize("name", ["bn-ln", "official"])  # "official": the rule's earlier name, still accepted
def test_a_bn_ln_rule_that_selects_nothing_says_which_rule_would(tmp_path_factory, name):
    bundle = ueo.load_clip(family_folder("ConvNeXt", tmp_path_factory), device="cpu")
    with pytest.raises(ueo.ConfigError, match=r"rule 'all-norms' selects [\d,]+"):
        ueo.configure_tuning(bundle.model, PromptLearner(bundle, NAMES), "both", name)
    bundle.model.requires_grad_(False)


# Tuned norm-affine values of the full architectures under the default rule ("auto"), built on the meta
# device (no memory, no time). Where auto falls back to all-norms, the count is also checked against an
# independent count of every normalisation module's affine parameters.
FULL_COUNTS = {
    "ViT-B-32": ("bn-ln", 39_936),
    "ViT-B-16": ("bn-ln", 39_936),
    "ViT-L-14": ("bn-ln", 102_400),
    "RN50": ("bn-ln", 45_568),
    "RN101": ("bn-ln", 97_792),
    "convnext_base": ("all-norms", 40_192),
    "swin_base_patch4_window7_224": ("all-norms", 57_600),
    "ViT-B-16-SigLIP": ("all-norms", 39_936),
    "ViT-B-16-SigLIP2": ("all-norms", 39_936),
    "EVA02-B-16": ("all-norms", 105_984),
    "MobileCLIP-S1": ("bn-ln", 55_680),
    "coca_ViT-B-32": ("bn-ln", 41_984),
    "ViTamin-S": ("all-norms", 34_560),
    "PE-Core-T-16-384": ("all-norms", 10_368),
    "ViT-L-14-CLIPA": ("bn-ln", 100_352),
    "ViT-L-14-worldwide": ("bn-ln", 102_400),
}


@pytest.mark.parametrize("name", list(FULL_COUNTS))
def test_tuned_parameter_counts_of_the_full_architectures(name):
    model = open_clip.create_model(name, pretrained=None, device="meta")
    rule, count = FULL_COUNTS[name]
    assert resolve_rule(model, "auto") == rule
    assert sum(p.numel() for p in tunable_parameters(model, "auto").values()) == count
    if rule == "all-norms":
        assert count == independent_norm_count(model.visual)
