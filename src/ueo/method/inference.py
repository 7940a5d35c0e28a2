"""Scoring images: cosines to the known classes' text features, MCM scores, and :func:`evaluate`.

Datasets are any PyTorch ``Dataset`` whose items are ``(image, label)``: ``image`` a PIL image (the
model's views are applied) or a float tensor [3, S, S] already normalised (used as given); ``label`` an
int, -1 (or None) when unknown or unlabeled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import DEFAULT_INIT, METHODS, FitConfig
from ..data import ImageList
from ..errors import ConfigError, DataError, IncompatibleError, Interrupted
from ..images import ImageFiles, Tally, as_dataset
from ..model import AdaptedState, PromptLearner, applied, batch_statistics
from ..views import image_source
from .distributed import gather_in_order, rank_indices, rank_world
from .metrics import compute_metrics
from .objectives import TPT_VIEWS, confident_views, marginal_entropy_loss, mcm_scores

SCORED = Tally()  # a hook for tests and benchmarks: the images of each scoring pass (outputs_of)


@dataclass
class Outputs:
    """Raw outputs of one evaluation pass, in dataset order. cosines: [N, K] raw cosine similarities;
    features: [N, D] the L2-normalised image features, when asked for (None otherwise)."""

    cosines: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None

    @property
    def predictions(self) -> torch.Tensor:
        return self.cosines.argmax(dim=-1)

    @property
    def scores(self) -> torch.Tensor:
        """MCM: max softmax of raw cosines (temperature 1); higher = more likely known."""
        return mcm_scores(self.cosines)

    def metrics(self, num_known: int) -> dict[str, float | None]:
        return compute_metrics(self.labels.numpy(), self.predictions.numpy(), self.scores.numpy(), num_known)

    def part(self, positions: torch.Tensor, labels: torch.Tensor) -> Outputs:
        """The outputs of the images at ``positions``, with their own ``labels``."""
        features = self.features[positions] if self.features is not None else None
        return Outputs(self.cosines[positions], labels, features)


def positions_in(part, whole) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(positions in ``whole``, labels) of every image of ``part`` when both datasets are image files and
    each file of ``part`` is also in ``whole`` (the transductive protocols: the adaptation set is part of
    the test set), else None. Eval views depend on the image alone, so ``part``'s outputs are then
    ``whole``'s at these positions, and ``part`` needs no scoring of its own."""
    if not isinstance(part, ImageFiles) or not isinstance(whole, ImageFiles):
        return None
    a, b = part.images, whole.images
    where = {str(path): i for i, path in enumerate(b.paths)}
    positions = [where.get(str(path)) for path in a.paths]
    if any(i is None for i in positions):
        return None
    return torch.tensor(positions, dtype=torch.long), torch.tensor(a.labels, dtype=torch.long)


def autocast(device: torch.device, amp: bool | None):
    """bf16 autocast when ``amp`` (None: on CUDA only); the frozen weights compute in bf16."""
    use = device.type == "cuda" if amp is None else amp
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def image_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised fp32 image features [B, D]."""
    return F.normalize(model.encode_image(images).float(), dim=-1)


@torch.no_grad()
def outputs_of(
    model: torch.nn.Module,
    text_features: torch.Tensor,
    source,
    *,
    batch_size: int,
    amp: bool | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    keep_features: bool = False,
    test_time: Callable | None = None,
) -> Outputs:
    """Raw cosines [N, K] and labels (and, with ``keep_features``, image features [N, D]) of every image of
    ``source`` (an image source of ``views`` or ``fastpath``), in dataset order. Under torch.distributed each rank scores every world-th image and the
    results are gathered: every image counted exactly once.

    should_stop: polled between batches (under torch.distributed every 10 batches, at batches every rank
    has; it must agree across ranks); when it returns True, Interrupted is raised.
    test_time: each batch's cosines from ``test_time(features, indices, source)`` instead (TPT's per-image
    tuning, ``TestTimePrompt``)."""
    SCORED.add(len(source))
    device = text_features.device
    mine = rank_indices(len(source))
    rank, world = rank_world()
    shared = len(source) // world // batch_size  # batches that every rank has
    cosines, labels, kept = [], [], []
    batches = tqdm(
        source.eval_batches(mine, batch_size),
        desc="evaluate" if test_time is None else "test-time tuning",
        unit="batch",
        total=math.ceil(len(mine) / batch_size),
        disable=None if progress and rank == 0 else True,  # (a bar on a terminal only)
        leave=False,
    )
    for position, (images, batch_labels, index) in enumerate(batches):
        if should_stop is not None and (world == 1 or (position % 10 == 9 and position < shared)) and should_stop():
            raise Interrupted("stopped during an evaluation")
        with autocast(device, amp):
            feats = image_features(model, images.to(device, non_blocking=True))
        if test_time is not None:
            cosines.append(test_time(feats.float(), index, source).float())
        else:
            cosines.append((feats @ text_features.float().T).float())
        labels.append(batch_labels.to(device))
        if keep_features:
            kept.append(feats.float())
    cos = torch.cat(cosines) if cosines else torch.zeros(0, text_features.shape[0], device=device)
    lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    features = None
    if keep_features:
        feats = torch.cat(kept) if kept else torch.zeros(0, text_features.shape[1], device=device)
        features = gather_in_order(feats, len(source)).cpu()
    return Outputs(gather_in_order(cos, len(source)).cpu(), gather_in_order(lab, len(source)).cpu(), features)


# Test-time prompt tuning (TPT, Shu et al. 2022): each test image is predicted by a context tuned for it
# alone, then the context is reset.
#
# For each image: ``TPT_VIEWS`` views (the eval view and ``TPT_VIEWS - 1`` train views, drawn from the seeds
# (seed, view, image) as every train view is); the ``objectives.TPT_KEEP`` fraction of them whose predictions have the
# lowest entropy; one optimiser step (AdamW by TPT's recipe) on the context, minimising the entropy of their
# averaged prediction; the image's eval view predicted with the tuned context; the context and the
# optimiser's state put back. The image tower is frozen, so its features of the views are computed once per
# batch, without gradients; the text tower runs forward and backward once per image.


class TestTimePrompt:
    """``ueo.inference.outputs_of``'s ``test_time``: the cosines [B, K] of a batch, each image's with a
    context tuned for it (TPT). The learner's context is left as it was found."""

    __test__ = False  # (not a pytest test class)

    def __init__(self, model: torch.nn.Module, learner: PromptLearner, config: FitConfig, views: int = TPT_VIEWS):
        if views < 2:
            raise ValueError(f"TPT needs at least 2 views of each image, got {views}.")
        self.model, self.learner, self.views = model, learner, views
        self.lr, self.weight_decay, self.scale = config.lr_prompt, config.weight_decay, config.logit_scale
        self.amp = config.amp

    def __call__(self, feats: torch.Tensor, index: torch.Tensor, source) -> torch.Tensor:
        """feats: the eval views' image features [B, D] of the images ``index`` of ``source``."""
        extra = self.view_features(source, index.tolist())  # [B, V - 1, D]
        rows = [self.one_image(torch.cat([feats[b : b + 1], extra[b]]), feats[b]) for b in range(len(feats))]
        return torch.stack(rows) if rows else feats.new_zeros(0, len(self.learner.class_names))

    @torch.no_grad()
    def view_features(self, source, indices: list[int]) -> torch.Tensor:
        device = self.learner.ctx.device
        parts = []
        for view in range(1, self.views):  # the train views of draw ``view`` (seeds (seed, view, image))
            images, _, _ = next(iter(source.train_batches([indices], view)))
            with autocast(device, self.amp):
                parts.append(image_features(self.model, images.to(device)).float())
        return torch.stack(parts, dim=1)

    def one_image(self, view_feats: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The cosines [K] of one image's eval view, after one step on its views [V, D]; the context reset."""
        ctx = self.learner.ctx
        before = ctx.detach().clone()
        optimizer = torch.optim.AdamW([ctx], lr=self.lr, weight_decay=self.weight_decay)
        try:
            with torch.enable_grad(), autocast(ctx.device, self.amp):
                text = self.learner.text_features().float()
                probs = torch.softmax(self.scale * view_feats @ text.T, dim=-1)
                loss = marginal_entropy_loss(probs[confident_views(probs.detach())])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad(), autocast(ctx.device, self.amp):
                return feats @ self.learner.text_features().float().T
        finally:
            with torch.no_grad():
                ctx.copy_(before)
            ctx.grad = None


def evaluate(
    bundle,
    test,
    *,
    class_names: Sequence[str] | None = None,
    adapted: AdaptedState | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    amp: bool | None = None,
    progress: bool = False,
    fast: bool | None = None,
    init: str = DEFAULT_INIT,
    should_stop: Callable[[], bool] | None = None,
    features: bool = False,
    cache=True,
    method: str | None = None,
) -> tuple[dict, Outputs]:
    """Evaluate zero-shot CLIP, or CLIP with an adapted state applied, on ``test``: a dataset of (image,
    label) items, or what ``ueo.read_images`` gives.

    class_names default to the adapted state's. Returns (metrics dict, Outputs).
    init: the prompt's words when no adapted state is given (the zero-shot prompt "{init} {name}.").
    fast: decode once and make the eval views on the device (None: yes, for datasets of PIL images).
    should_stop: polled between batches; when it returns True, Interrupted is raised.
    features: also keep the image features (``Outputs.features``), e.g. for ``ueo.discover``.
    cache: how image files are read (see ``feed.decode_cache_of``): by default through the user's decode cache,
        so that a second call decodes nothing; False: each decoded from its file when its batch comes.
    method: how the images are predicted; None: as the adapted state's method predicts (a TPT state tunes its
        context for each image, a Tent state normalises with each batch's statistics; others as they are).
        "tpt": TPT from the given context (the state's, else the zero-shot prompt); its cost per image is 63
        more views through the image tower and one forward and backward pass of the text tower.
    The bundle's model is left unchanged.
    """
    test = as_dataset(test)[0] if isinstance(test, ImageList) else test
    if method is not None and method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; choose one of {METHODS}.")
    made_by = adapted.info.get("method") if adapted is not None and not adapted.is_zeroshot else None
    method = method or made_by or "zeroshot"
    seed = int(adapted.info.get("seed", 0)) if adapted is not None and made_by == "tpt" else 0
    if adapted is not None:
        adapted.check_compatible(bundle)
        adapted.check_fits(bundle.model)
        class_names = class_names or adapted.class_names
        init = adapted.init
        adapted = None if adapted.is_zeroshot else adapted  # (a selection kept zero-shot: its prompt, as it is)
    if not class_names:
        raise DataError("class_names are needed when no adapted state is given.")
    if len(test) == 0:
        raise DataError("The evaluation set is empty.")
    learner = PromptLearner(bundle, class_names, init=init).to(bundle.device)
    bundle.model.eval()
    with applied(bundle.model, learner, adapted.tensors if adapted is not None else {}):
        with torch.no_grad(), autocast(bundle.device, amp):
            text = learner.text_features().float()
        if not torch.isfinite(text).all():
            raise IncompatibleError("The adapted state gives non-finite text features on this model: it is damaged.")
        source = image_source(
            bundle, test, fast=fast, cache=cache, seed=seed, num_workers=num_workers, progress=progress
        )
        tpt = TestTimePrompt(bundle.model, learner, FitConfig.for_method("tpt", amp=amp)) if method == "tpt" else None
        with batch_statistics(bundle.model, method == "tent"):
            out = outputs_of(
                bundle.model,
                text,
                source,
                batch_size=batch_size,
                amp=amp,
                progress=progress,
                should_stop=should_stop,
                keep_features=features,
                test_time=tpt,
            )
    return out.metrics(len(class_names)), out
