"""Naming groups of unknown images from a vocabulary through the model's own text tower: a one-template scan
of the whole vocabulary (cached), the best re-scored with CLIP's templates and the learned prompt, names
that mean a listed class left out (``ueo.discovery`` finds the groups)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data import fold
from ..errors import DataError
from ..model import PromptLearner, applied
from . import vocabulary as vocab

SYNONYM_COSINE = 0.95


RERANK = 50


TOP_NAMES = 3


# ------------------------------------------------------------------------------------------------- names
def same_name(a: str, b: str) -> bool:
    """Equal ignoring case, '_' and a plural 's'."""
    x, y = fold(a), fold(b)
    return x == y or x.rstrip("s") == y.rstrip("s")


def allowed_names(names: Sequence[str], features: torch.Tensor, listed: Sequence[str], listed_features: torch.Tensor):
    """A mask [V] of the vocabulary names that mean no listed class (see the module's docstring)."""
    near = (
        (features @ listed_features.T).max(dim=1).values >= SYNONYM_COSINE
        if len(listed)
        else torch.zeros(len(names), dtype=torch.bool)
    )
    equal = torch.tensor([any(same_name(n, c) for c in listed) for n in names], dtype=torch.bool)
    broader = torch.tensor([covers(n, listed) for n in names], dtype=torch.bool)
    return ~(near | equal | broader)


def covers(name: str, listed: Sequence[str]) -> bool:
    """Whether ``name`` is broader than a listed class: each of its words is a word of one listed name ("blue"
    or "circle" for "blue circle", "cat" for "tabby cat"). Such a name covers listed classes; proposed as a
    class of its own, it would take their images from them."""
    words = set(fold(name).split())
    return bool(words) and any(words <= set(fold(c).split()) for c in listed)


def best_names(centres: torch.Tensor, features: torch.Tensor, allowed: torch.Tensor, top: int) -> list[list[int]]:
    """For each centre, the ``top`` allowed vocabulary indices of highest cosine, best first."""
    similarity = centres @ features.T
    similarity[:, ~allowed] = -float("inf")
    count = min(top, int(allowed.sum()))
    return similarity.topk(count, dim=1).indices.tolist() if count else [[] for _ in range(len(centres))]


# ------------------------------------------------------------------------------------------ the whole pass
def vocabulary_names(vocabulary, warn=print) -> list[str] | None:
    """The candidate names: None/"default" -> ImageNet-21k, "none" -> no naming, a path -> its file, a list."""

    if vocabulary is None or vocabulary == "default":
        return vocab.default_vocabulary()
    if isinstance(vocabulary, str) and vocabulary.lower() == "none":
        return None
    if isinstance(vocabulary, (list, tuple)):
        if not all(isinstance(n, str) for n in vocabulary):
            raise DataError(f"a vocabulary is a list of names (texts); it holds {vocabulary!r:.80}.")
        return vocab.clean(list(vocabulary), "the vocabulary", warn)
    if not isinstance(vocabulary, (str, os.PathLike)):
        raise DataError(
            f"vocabulary must be 'default', 'none', a file (one name a line) or a list of names; got {vocabulary!r:.60}."
        )
    return vocab.read_vocabulary(vocabulary, warn)


def learned_features(bundle, state, names: Sequence[str]) -> torch.Tensor:
    """[N, D]: the features of "[learned context] name." (the zero-shot prompt when no context was learned)."""

    learner = PromptLearner(bundle, list(names), init=state.init).to(bundle.device)
    with applied(bundle.model, learner, state.tensors), torch.no_grad():
        return learner.text_features().float().cpu()


def name_groups(
    groups, centres, bundle, state, names, *, cache_dir=None, progress=False, should_stop=None, warn=print
) -> None:
    """Give each group its TOP_NAMES best allowed names, or "looks like" a listed class (see the module).
    ``should_stop``: polled while the vocabulary is encoded; ``warn``: says when its features cannot be kept."""

    listed = list(state.class_names)
    scan = vocab.template_features(
        bundle,
        names,
        templates=vocab.SCAN_TEMPLATES,
        cache_dir=cache_dir,
        progress=progress,
        should_stop=should_stop,
        warn=warn,
    )
    allowed = allowed_names(
        names, scan, listed, vocab.template_features(bundle, listed, templates=vocab.SCAN_TEMPLATES)
    )
    candidates = best_names(centres, scan, allowed, RERANK)
    pool = sorted({i for row in candidates for i in row})
    if not pool:
        return

    def scored_features(texts):  # the seven templates' feature and the learned prompt's, together
        ensemble = vocab.template_features(bundle, texts)
        return F.normalize(ensemble + learned_features(bundle, state, texts), dim=-1)

    final = scored_features([names[i] for i in pool])
    position = {i: p for p, i in enumerate(pool)}
    listed_final = scored_features(listed)
    taken: set[str] = set()  # a name given to a bigger group goes after the others of a smaller one
    for group, row, centre in zip(groups, candidates, centres):
        scored = sorted(((float(final[position[i]] @ centre), names[i]) for i in row), reverse=True)
        scored = [x for x in scored if x[1] not in taken] + [x for x in scored if x[1] in taken]
        group.names = [(n, round(s, 4)) for s, n in scored[:TOP_NAMES]]
        taken.add(scored[0][1])
        listed_scores = listed_final @ centre
        best = int(listed_scores.argmax())
        if float(listed_scores[best]) > max(x[0] for x in scored):
            group.looks_like, group.looks_like_score = listed[best], round(float(listed_scores[best]), 4)
