import pytest
import torch

import ueo
from ueo import IncompatibleError
from ueo.errors import ConfigError
from ueo.model.prompts import PromptLearner
from ueo.model.state import AdaptedState
from ueo.model.tuning import (
    adapted_state,
    applied,
    apply_adapted_state,
    configure_tuning,
    tunable_parameters,
)


def numel(params) -> int:
    return sum(p.numel() for p in params.values())


def test_official_rule_counts_match_the_reference():
    vit = ueo.load_clip("ViT-B-16", device="cpu").model
    rn = ueo.load_clip("RN50", device="cpu").model
    assert numel(tunable_parameters(vit)) == 39_936
    assert numel(tunable_parameters(rn)) == 45_568
    rn_all = tunable_parameters(rn, "all-norms")
    assert numel(rn_all) == 53_248  # + the four downsample BatchNorms (docs/method.md)
    extra = set(rn_all) - set(tunable_parameters(rn))
    assert extra and all("downsample.1" in name for name in extra)
    assert not any("attnpool" in n or "downsample" in n for n in tunable_parameters(rn))
    assert set(tunable_parameters(vit, "all-norms")) == set(tunable_parameters(vit))
    assert "visual.transformer.resblocks.11.ln_2.bias" in tunable_parameters(vit)


def test_tiny_rn_names(tiny_rn):
    names = set(tunable_parameters(tiny_rn.model))
    assert "visual.bn1.weight" in names and "visual.layer1.0.bn3.bias" in names
    assert all(n.startswith("visual.") and n.endswith((".weight", ".bias")) for n in names)
    with pytest.raises(ConfigError, match="Unknown tuning rule"):
        tunable_parameters(tiny_rn.model, "everything")


@pytest.mark.parametrize("tune", ["prompt", "norm", "both"])
def test_configure_tuning_freezes_all_else(tiny_rn, tune):
    learner = PromptLearner(tiny_rn, ["cat", "dog"])
    tiny_rn.model.train()
    selected = configure_tuning(tiny_rn.model, learner, tune)
    trainable = {n for n, p in tiny_rn.model.named_parameters() if p.requires_grad}
    if learner.ctx.requires_grad:
        trainable.add("prompt.ctx")
    assert trainable == set(selected)
    assert ("prompt.ctx" in selected) == (tune != "norm")
    assert (len(selected) > 1) == (tune != "prompt")
    assert not tiny_rn.model.training and not tiny_rn.model.visual.bn1.training


def test_adapted_state_roundtrip_and_refusals(tmp_path, tiny_vit, tiny_rn):
    learner = PromptLearner(tiny_vit, ["cat", "dog"])
    params = configure_tuning(tiny_vit.model, learner, "both")
    state = adapted_state(params)
    changed = {k: v + 1.0 for k, v in state.items()}
    saved = AdaptedState(changed, ["cat", "dog"], "ueo-tiny-vit", None, info={"method": "ueo"})
    saved.save(tmp_path / "adapted.safetensors")
    loaded = AdaptedState.load(tmp_path / "adapted.safetensors")
    assert loaded.class_names == ["cat", "dog"] and loaded.info == {"method": "ueo"} and loaded.pretrained is None
    assert all(torch.equal(loaded.tensors[k], changed[k]) for k in changed)
    with applied(tiny_vit.model, learner, loaded.tensors):
        assert torch.equal(tiny_vit.model.visual.ln_pre.weight, changed["visual.ln_pre.weight"])
    assert torch.equal(tiny_vit.model.visual.ln_pre.weight, state["visual.ln_pre.weight"])  # restored
    with pytest.raises(IncompatibleError, match="made for model 'ueo-tiny-vit', not 'ueo-tiny-rn'"):
        loaded.check_compatible(tiny_rn)
    with pytest.raises(IncompatibleError, match="different model"):
        apply_adapted_state(tiny_vit.model, learner, {"visual.nothing.weight": torch.zeros(1)})
    with pytest.raises(IncompatibleError, match="Shape mismatch"):
        apply_adapted_state(tiny_vit.model, learner, {"visual.ln_pre.weight": torch.zeros(3)})
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(IncompatibleError, match="not a readable ueo adapted state"):
        AdaptedState.load(tmp_path / "other.safetensors")
