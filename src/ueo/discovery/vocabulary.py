"""Candidate names for what the class list misses, and their text features through a model's own text tower.

The default vocabulary is the ImageNet-21k (WordNet) synsets that timm ships in its package data: the
first lemma of each synset, read through ``timm.data.ImageNetInfo`` (no network), each name once. A file
(one name a line, UTF-8; a byte-order mark and blank lines ignored) replaces it.

A name's text feature is the normalised mean of its features under prompt templates: the whole
vocabulary is scanned with "a photo of a {}." and each group's shortlist is scored with CLIP's ensemble
of seven templates (Radford et al., 2021). The scan's features depend on the model and its weights alone,
so they are computed once and kept on disk beside the decode cache (``vocabulary/`` in it), keyed by the
weights' identity, the names and the templates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import UNKNOWN
from ..data import fold, read_text
from ..errors import DataError, Interrupted
from ..files import mark_cache, read_tagged, write_tagged
from ..model import encode_tokens

TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# The whole vocabulary is scanned with one template (encoding it is the costly part: once per model and
# weights, then read from the cache); the shortlist of each group is scored with all seven.
SCAN_TEMPLATES = ("a photo of a {}.",)
MAX_NAMES = 50_000  # a longer file is refused (encoding it would take longer than adapting)
MAX_NAME_WORDS = 12
FEATURES_FORMAT = "ueo-vocabulary/1"


def clean(names: Sequence[str], where: str, warn=print) -> list[str]:
    """Each name once (ignoring case and '_'), without blanks or 'unknown'; a warning says what was dropped."""
    kept, seen, dropped = [], set(), 0
    for name in names:
        name = " ".join(name.replace("_", " ").split())
        key = fold(name)
        if not name or key in seen or key == fold(UNKNOWN) or len(name.split()) > MAX_NAME_WORDS:
            dropped += bool(name)
            continue
        seen.add(key)
        kept.append(name)
    if dropped:
        warn(
            f"warning: {where}: {dropped} name(s) left out (repeated, 'unknown', or longer than {MAX_NAME_WORDS} words)."
        )
    if not kept:
        raise DataError(f"{where}: no names in the vocabulary.")
    return kept


def default_vocabulary() -> list[str]:
    """The first lemma of every ImageNet-21k synset (timm's package data), each name once."""
    from timm.data import ImageNetInfo

    descriptions = ImageNetInfo("imagenet-22k").label_descriptions(as_dict=False)
    return clean([d.split(",")[0] for d in descriptions], "the ImageNet-21k vocabulary", warn=lambda _: None)


def read_vocabulary(path, warn=print) -> list[str]:
    """The names of a vocabulary file: one a line, UTF-8 (a byte-order mark ignored), blank lines skipped."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such vocabulary file (one name a line; or 'none' to name nothing).")
    lines = read_text(Path(path), " (a vocabulary: one name a line, UTF-8)").splitlines()
    if len(lines) > MAX_NAMES:
        raise DataError(f"{path}: {len(lines):,} lines; a vocabulary holds at most {MAX_NAMES:,} names.")
    return clean(lines, str(path), warn)


def encode_texts(
    bundle, texts: Sequence[str], batch_size: int = 2048, progress: bool = False, should_stop=None
) -> torch.Tensor:
    """L2-normalised text features [N, D] of plain texts through the bundle's own text tower. ``should_stop``:
    polled between batches (Interrupted when it says so: encoding a vocabulary takes minutes on a CPU)."""

    pad_id = int(bundle.tokenizer([""])[0][-1])  # an empty text is padding at its end, whatever the tokenizer
    parts = []
    device = next(bundle.model.parameters()).device
    steps = range(0, len(texts), batch_size)
    for start in tqdm(steps, desc="vocabulary", unit="batch", disable=None if progress else True, leave=False):
        if should_stop is not None and should_stop():
            raise Interrupted("stopped while encoding the vocabulary")
        tokens = bundle.tokenizer(list(texts[start : start + batch_size])).to(device)
        with torch.no_grad():
            parts.append(encode_tokens(bundle.model, tokens, pad_id).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def features_name(bundle, names: Sequence[str], templates: Sequence[str]) -> str:
    """The file of a vocabulary's features in the cache (24 hex digits: the model, its weights, the names and
    the templates)."""
    key = json.dumps([bundle.name, bundle.identity, list(names), list(templates)], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:24] + ".safetensors"


def template_features(
    bundle,
    names: Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    cache_dir=None,
    progress: bool = False,
    should_stop=None,
    warn=print,
) -> torch.Tensor:
    """[V, D]: each name's normalised mean feature over ``templates``, read from the cache on disk when there
    (``cache_dir``/vocabulary). A cache that cannot be written (a full disk, a read-only folder) only costs
    computing them again: ``warn`` says so, and the run goes on."""
    path = Path(cache_dir) / "vocabulary" / features_name(bundle, names, templates) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return read_tagged(path, FEATURES_FORMAT, "vocabulary features")[1]["features"]
        except Exception:  # a damaged file is computed again
            path.unlink(missing_ok=True)
    texts = [template.format(name) for name in names for template in templates]
    features = encode_texts(bundle, texts, progress=progress, should_stop=should_stop)
    features = torch.nn.functional.normalize(features.view(len(names), len(templates), -1).mean(dim=1), dim=-1)
    if path is not None:
        try:
            mark_cache(cache_dir)
            path.parent.mkdir(exist_ok=True)
            write_tagged(path, {"features": features.contiguous()}, {"model": bundle.name}, FEATURES_FORMAT)
        except Exception as error:  # OSError, or safetensors' own error for a full disk
            warn(
                f"warning: the vocabulary's text features cannot be kept in {path.parent} ({error}); they are "
                "computed again the next time."
            )
    return features
