"""What the class list misses: the listed classes that seem absent, the groups among the images decided
"unknown", names for those groups, and the corrected class list.

All from the adapted model's outputs on a collection (no label is used):

* **A listed class's share** of the collection is the mean, over the images accepted as known (score >=
  the threshold), of its training probability softmax(100 · cos)_k. Shares sum to 1 over the K classes.
  A class is flagged **absent** when its share is below ``ABSENT_RATIO`` (0.45) times the median class's
  share: a present class takes about its frequency among the present classes, an absent one only the
  probability that leaks to it, and while fewer than half the listed classes are absent the median is a
  present class's (with more absent, the median is an absent class's and fewer are flagged). No class
  is judged without evidence: with fewer than ``MIN_PER_CLASS`` (8) accepted images per listed class every
  verdict is "too few images to tell", and nothing is removed from the list. (With 8 per class, a class of
  average frequency expects 8 images; sampling alone leaves it with at most 3, under half, 4% of the time:
  Poisson(8).)
* **Groups** are k-means clusters of the unknown-decided images' adapted image features (unit vectors),
  with k in 2..MAX_GROUPS chosen by the silhouette score (on a sample of at most SILHOUETTE_SAMPLE
  images: nothing is N x N); when no k reaches MIN_SILHOUETTE they are one group. Groups smaller than
  MIN_GROUP images (and than MIN_GROUP_FRACTION of the unknowns) go into "other".
* **Names**: each group's centroid (the normalised mean feature of its members) is compared by cosine
  with every vocabulary name's feature of "a photo of a {name}."; the RERANK best are scored again with
  CLIP's seven templates and the learned prompt (the normalised sum of the seven templates' mean feature
  and the feature of "[learned context] name."), and the best 3 are kept (a name that a bigger group
  has as its best goes last in a smaller group's). A name that means a listed class is
  never proposed: one that equals a listed name (ignoring case, '_' and a plural 's'), whose feature of
  "a photo of a {name}." has a cosine of at least SYNONYM_COSINE with a listed class's, or that is broader
  than a listed class (each of its words is a word of one listed name: ``naming.covers``). A group whose centroid is
  closer to a listed class (scored the same way) than to its best name "looks like" that class: its
  images resemble a listed class but scored below the threshold.
* **The corrected list** is the listed classes minus the absent ones, plus each group's best name
  (groups that look like a listed class add nothing), with a ``#`` comment line for every change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..classifier import Classifier
from ..config import FitResult
from ..errors import ConfigError
from ..images import as_dataset, default_cache_dir
from ..method import evaluate, mcm_scores
from ..model import choose_threshold
from .naming import name_groups, same_name, vocabulary_names

ABSENT_RATIO = 0.45
MIN_PER_CLASS = 8  # accepted images per listed class that a verdict on absent classes needs
MAX_GROUPS = 10
MIN_SILHOUETTE = 0.1
SILHOUETTE_SAMPLE = 2000
MIN_GROUP = 3
MIN_GROUP_FRACTION = 0.05


@dataclass
class ListedClass:
    """A listed class's share of the collection, the images decided to be it, and whether it seems absent."""

    name: str
    share: float
    decided: int
    absent: bool


@dataclass
class Group:
    """A group of unknown-decided images: ``members`` (positions in the collection, most central first),
    the best ``names`` [(name, cosine)], and ``looks_like`` (a listed class it resembles more, or None)."""

    number: int
    members: list[int]
    names: list[tuple[str, float]] = field(default_factory=list)
    looks_like: str | None = None
    looks_like_score: float | None = None

    @property
    def name(self) -> str | None:
        return self.names[0][0] if self.names and self.looks_like is None else None


@dataclass
class Discovery:
    """``absent``: every listed class with its share and verdict; ``groups``: the groups of unknown images;
    ``other``: unknown images in no group; ``unknown``: every unknown-decided image; ``suggested_classes``
    and ``changes`` (one line per change); ``paths``: the collection's files, when it has them;
    ``accepted``: the images accepted as known (the evidence of the absent classes' verdicts), and
    ``too_few``: whether they are too few for any verdict."""

    absent: list[ListedClass]
    groups: list[Group]
    other: list[int]
    unknown: list[int]
    suggested_classes: list[str]
    changes: list[str]
    paths: list[str] | None = None
    accepted: int = 0
    too_few: bool = False

    @property
    def absent_classes(self) -> list[str]:
        return [c.name for c in self.absent if c.absent]

    @property
    def summary(self) -> str:
        """One sentence: what changed."""
        gone = self.absent_classes
        if self.too_few:
            needed = MIN_PER_CLASS * len(self.absent)
            first = (
                f"too few images to tell whether a listed class is absent ({self.accepted} accepted as known; "
                f"a verdict needs {MIN_PER_CLASS} per listed class, {needed})"
            )
        elif gone:
            first = (
                f"{len(gone)} listed class{'es' * (len(gone) != 1)} seem{'s' * (len(gone) == 1)} absent "
                f"({', '.join(gone[:5])}" + (", ..." if len(gone) > 5 else "") + ")"
            )
        else:
            first = "no listed class seems absent"
        named = [g.name for g in self.groups if g.name]
        if not self.unknown:
            second = "no image was decided unknown"
        elif not self.groups:
            one = len(self.unknown) == 1
            second = f"the {len(self.unknown)} unknown image{'' if one else 's'} form{'s' if one else ''} no group"
        else:
            looks = [g for g in self.groups if g.looks_like]
            many = len(self.groups) != 1
            second = f"{len(self.groups)} group{'s' * many} of unknown images"
            if named and len(named) == len(self.groups):
                second += f" look{'' if many else 's'} like {_and(named)}"
            else:
                unnamed = len(self.groups) - len(named) - len(looks)
                bits = [f"{len(named)} look{'s' * (len(named) == 1)} like {_and(named)}"] if named else []
                bits += [
                    f"{len(looks)} look{'s' * (len(looks) == 1)} like {'a listed class' if len(looks) == 1 else 'listed classes'} below the threshold"
                ] * bool(looks)
                bits += [f"{unnamed} not named"] * bool(unnamed)
                second += ": " + ", ".join(bits)
        return f"{first[0].upper()}{first[1:]}; {second}."

    def record(self) -> dict:
        """What metrics.json keeps of it."""
        return {
            "summary": self.summary,
            "absent": self.absent_classes,
            "absent_verdict": "too few images" if self.too_few else "made",
            "accepted": self.accepted,
            "groups": [
                {"group": g.number, "size": len(g.members), "names": g.names, "looks_like": g.looks_like}
                for g in self.groups
            ],
            "num_unknown": len(self.unknown),
            "num_other": len(self.other),
            "suggested_classes": self.suggested_classes,
        }


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------ absent classes
def class_shares(cosines: torch.Tensor, accepted: torch.Tensor, logit_scale: float = 100.0):
    """(shares [K], decided [K]): the mean training probability of each class over the accepted images,
    and how many accepted images are decided to be each class."""
    k = cosines.shape[1]
    if not bool(accepted.any()):
        return torch.zeros(k), torch.zeros(k, dtype=torch.long)
    kept = cosines[accepted].float()
    shares = torch.softmax(logit_scale * kept, dim=-1).mean(dim=0)
    decided = torch.bincount(kept.argmax(dim=-1), minlength=k)
    return shares, decided


def absent_verdicts(shares: torch.Tensor, accepted: int, ratio: float = ABSENT_RATIO) -> torch.Tensor | None:
    """Which classes seem absent: a share below ``ratio`` times the median share; None (no verdict) when
    fewer than MIN_PER_CLASS images per class were accepted."""
    if accepted < MIN_PER_CLASS * len(shares):
        return None
    return shares < ratio * float(np.median(shares.numpy()))


# ------------------------------------------------------------------------------------------------ groups
def find_groups(features: np.ndarray, seed: int = 0, max_groups: int = MAX_GROUPS) -> np.ndarray:
    """Group labels [M] of unit feature vectors (-1: in no group), by k-means with k chosen by silhouette."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.metrics import silhouette_score

    m = len(features)
    smallest = max(MIN_GROUP, int(np.ceil(MIN_GROUP_FRACTION * m)))
    if m < smallest:
        return np.full(m, -1)
    features = np.asarray(features, dtype=np.float32)
    best, best_score = np.zeros(m, dtype=int), MIN_SILHOUETTE
    for k in range(2, min(max_groups, m // smallest) + 1):
        if m > 20_000:
            model = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
        else:
            model = KMeans(k, random_state=seed, n_init=4)
        labels = model.fit_predict(features)
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(features, labels, sample_size=min(m, SILHOUETTE_SAMPLE), random_state=seed)
        if score > best_score:
            best, best_score = labels, score
    counts = np.bincount(best)
    small = counts[best] < smallest
    best = np.where(small, -1, best)
    kept = sorted(set(best[best >= 0]), key=lambda g: -counts[g])  # biggest group first, numbered from 1
    renumber = {g: i for i, g in enumerate(kept)}
    return np.array([renumber.get(g, -1) for g in best])


def centroids(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """[G, D]: the normalised mean feature of each group 0..G-1."""
    groups = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    return (
        torch.stack([F.normalize(features[torch.as_tensor(labels == g)].mean(0), dim=0) for g in range(groups)])
        if groups
        else torch.zeros(0, features.shape[1])
    )


def central_first(features: torch.Tensor, members: np.ndarray, centre: torch.Tensor) -> list[int]:
    """``members`` (positions) ordered by their cosine to ``centre``, highest first."""
    similarity = (features[torch.as_tensor(members)] @ centre).numpy()
    return [int(members[i]) for i in np.argsort(-similarity, kind="stable")]


# -------------------------------------------------------------------------------------- the corrected list
def suggested(listed: Sequence[ListedClass], groups: Sequence[Group]) -> tuple[list[str], list[str]]:
    """(the corrected class list, a '#' comment line for each change)."""
    names, changes = [], []
    for c in listed:
        if c.absent:
            changes.append(
                f"# removed {c.name!r}: it seems absent (share {100 * c.share:.2f}% of the known images, {c.decided} decided)"
            )
        else:
            names.append(c.name)
    for g in groups:
        if g.name and not any(same_name(g.name, n) for n in names):
            also = ", ".join(n for n, _ in g.names[1:])
            changes.append(
                f"# added {g.name!r}: group {g.number}, {len(g.members)} images decided unknown"
                + (f" (also: {also})" if also else "")
            )
            names.append(g.name)
    return names, changes


def discover_outputs(
    outputs,
    bundle,
    state,
    threshold: float,
    *,
    names: Sequence[str] | None,
    cache_dir=None,
    seed: int = 0,
    progress: bool = False,
    paths: Sequence | None = None,
    logit_scale: float = 100.0,
    should_stop=None,
    warn=print,
) -> Discovery:
    """The discovery of a scored collection (``outputs`` with features, from ``evaluate(..., features=True)``),
    decided with ``threshold``; ``names``: the vocabulary (None: the groups are not named). ``should_stop``:
    polled while the vocabulary is encoded; ``warn``: where warnings go."""

    if outputs.features is None:
        raise ValueError("discovery needs the image features: evaluate(..., features=True)")
    listed = list(state.class_names)
    accepted = mcm_scores(outputs.cosines) >= threshold
    shares, decided = class_shares(outputs.cosines, accepted, logit_scale)
    verdicts = absent_verdicts(shares, int(accepted.sum()))
    flags = verdicts.tolist() if verdicts is not None else [False] * len(listed)
    classes = [ListedClass(n, float(s), int(d), bool(a)) for n, s, d, a in zip(listed, shares, decided, flags)]
    unknown = torch.nonzero(~accepted).flatten().numpy()
    features = outputs.features.float()
    labels = find_groups(features[torch.as_tensor(unknown)].numpy(), seed) if len(unknown) else np.zeros(0, dtype=int)
    centres = (
        centroids(features[torch.as_tensor(unknown)], labels) if len(unknown) else torch.zeros(0, features.shape[1])
    )
    groups = [Group(g + 1, central_first(features, unknown[labels == g], centres[g])) for g in range(len(centres))]
    if names is not None and groups:
        name_groups(
            groups,
            centres,
            bundle,
            state,
            names,
            cache_dir=cache_dir,
            progress=progress,
            should_stop=should_stop,
            warn=warn,
        )
    other = [int(i) for i, g in zip(unknown, labels) if g < 0]
    suggested_classes, changes = suggested(classes, groups)
    return Discovery(
        classes,
        groups,
        other,
        [int(i) for i in unknown],
        suggested_classes,
        changes,
        [str(p) for p in paths] if paths is not None else None,
        accepted=int(accepted.sum()),
        too_few=verdicts is None,
    )


def discover(
    source,
    images,
    *,
    vocabulary=None,
    threshold: float | None = None,
    cache_dir=None,
    seed: int = 0,
    progress: bool = False,
) -> Discovery:
    """Which listed classes seem absent from ``images`` and what the images decided unknown are.

    source: a ``Classifier`` (``ueo.load_adapted``) or a ``FitResult`` (``ueo.fit``; its bundle is used).
    images: paths, PIL images, or a dataset of (image, label) items.
    vocabulary: None (ImageNet-21k), "none" (no names), a file (one name a line) or a list of names.
    threshold: the "unknown" cut (default: the classifier's, or the state's fitted one).
    cache_dir: where the vocabulary's text features are kept (default: beside the decode cache).
    Returns a :class:`Discovery` (``.absent``, ``.groups``, ``.suggested_classes``, ``.summary``)."""

    cut: float | None
    if isinstance(source, Classifier):
        bundle, state, cut = source.bundle, source.state, source.threshold
    elif isinstance(source, FitResult) and source.adapted is not None and source.bundle is not None:
        bundle, state = source.bundle, source.adapted
        cut = state.threshold.value if state.threshold is not None else None
    else:
        raise ConfigError("discover takes a Classifier (ueo.load_adapted) or the result of ueo.fit.")
    dataset, paths = as_dataset(images)
    _, outputs = evaluate(bundle, dataset, adapted=state, features=True, progress=progress)
    if threshold is not None:
        cut = threshold
    if cut is None:
        cut = choose_threshold("auto", scores=outputs.scores.numpy(), source="these images").value
    return discover_outputs(
        outputs,
        bundle,
        state,
        float(cut),
        names=vocabulary_names(vocabulary),
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
        seed=seed,
        progress=progress,
        paths=paths,
    )
