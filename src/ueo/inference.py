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

from .config import DEFAULT_INIT
from .distributed import gather_in_order, rank_indices, rank_world
from .errors import DataError, IncompatibleError, Interrupted
from .feed import image_source
from .imagelist import ImageList
from .images import ImageFiles, Tally, as_dataset
from .metrics import compute_metrics
from .objectives import mcm_scores
from .prompts import PromptLearner
from .state import AdaptedState
from .tuning import applied

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
) -> Outputs:
    """Raw cosines [N, K] and labels (and, with ``keep_features``, image features [N, D]) of every image of
    ``source`` (an image source of ``views`` or ``fastpath``), in dataset order. Under torch.distributed each rank scores every world-th image and the
    results are gathered: every image counted exactly once.

    should_stop: polled between batches (under torch.distributed every 10 batches, at batches every rank
    has; it must agree across ranks); when it returns True, Interrupted is raised."""
    SCORED.add(len(source))
    device = text_features.device
    mine = rank_indices(len(source))
    rank, world = rank_world()
    shared = len(source) // world // batch_size  # batches that every rank has
    cosines, labels, kept = [], [], []
    batches = tqdm(
        source.eval_batches(mine, batch_size),
        desc="evaluate",
        unit="batch",
        total=math.ceil(len(mine) / batch_size),
        disable=not progress or rank > 0,
        leave=False,
    )
    for position, (images, batch_labels, _) in enumerate(batches):
        if should_stop is not None and (world == 1 or (position % 10 == 9 and position < shared)) and should_stop():
            raise Interrupted("stopped during an evaluation")
        with autocast(device, amp):
            feats = image_features(model, images.to(device, non_blocking=True))
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
    The bundle's model is left unchanged.
    """
    test = as_dataset(test)[0] if isinstance(test, ImageList) else test
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
        source = image_source(bundle, test, fast=fast, cache=cache, num_workers=num_workers, progress=progress)
        out = outputs_of(
            bundle.model,
            text,
            source,
            batch_size=batch_size,
            amp=amp,
            progress=progress,
            should_stop=should_stop,
            keep_features=features,
        )
    return out.metrics(len(class_names)), out
