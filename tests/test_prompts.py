import pytest
import torch

import ueo
from helpers import CLASSES
from ueo.errors import DataError
from ueo.model.prompts import PromptLearner, prompt_text


def reference_features(bundle, names):
    with torch.no_grad():
        return bundle.model.encode_text(bundle.tokenizer([prompt_text(n) for n in names]), normalize=True)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_initial_context_matches_open_clip_encode_text(request, fixture):
    bundle = request.getfixturevalue(fixture)
    learner = PromptLearner(bundle, CLASSES)
    with torch.no_grad():
        got = learner.text_features()
    assert got.shape == (len(CLASSES), bundle.model.text_projection.shape[1])
    assert torch.allclose(got, reference_features(bundle, CLASSES), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(CLASSES)), atol=1e-6)


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
def test_full_architectures_match_open_clip_encode_text(name):
    torch.manual_seed(0)
    bundle = ueo.load_clip(name, device="cpu")
    learner = PromptLearner(bundle, CLASSES)
    with torch.no_grad():
        got = learner.text_features()
    assert torch.allclose(got, reference_features(bundle, CLASSES), atol=1e-5)


def test_prompt_layout_truncation_and_chunks(tiny_vit):
    assert prompt_text("hot_dog") == "a photo of a hot dog."
    learner = PromptLearner(tiny_vit, CLASSES)
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, tiny_vit.model.token_embedding.weight.shape[1])
    full = tiny_vit.tokenizer([prompt_text(n) for n in CLASSES])
    longest_end = int(full.argmax(dim=-1).max())
    assert learner.tokens.shape == (len(CLASSES), longest_end + 1)
    assert torch.equal(learner.tokens, full[:, : longest_end + 1])
    # the context is initialised from the embeddings of "a photo of a"
    assert torch.equal(learner.ctx.data, tiny_vit.model.token_embedding(full[0, 1:5]))
    chunked = PromptLearner(tiny_vit, CLASSES, chunk_size=3)
    with torch.no_grad():
        assert torch.allclose(chunked.text_features(), learner.text_features(), atol=1e-6)


def test_context_is_the_only_thing_that_learns_and_it_changes_features(tiny_vit):
    learner = PromptLearner(tiny_vit, CLASSES, init="a photo")
    assert learner.n_ctx == 2
    assert [n for n, _ in learner.named_parameters()] == ["ctx"]
    tiny_vit.model.requires_grad_(False)
    learner.text_features().sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    before = learner.text_features().detach()
    with torch.no_grad():
        learner.ctx.add_(torch.randn_like(learner.ctx))  # (a uniform shift would cancel in LayerNorm)
        assert not torch.allclose(learner.text_features(), before, atol=1e-3)


def test_bad_class_lists_are_clear_errors(tiny_vit):
    with pytest.raises(DataError, match="empty"):
        PromptLearner(tiny_vit, [])
    with pytest.raises(DataError, match="does not fit"):
        PromptLearner(tiny_vit, ["cat", " ".join(["word"] * 80)])
