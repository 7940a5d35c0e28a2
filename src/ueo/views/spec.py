"""What the model sees of an image: one description of the views, seeded per sample, batched per epoch.

:class:`ViewSpec` is the single description of both views, used by the plain path (PIL transforms in
DataLoader workers, here) and by the fast path (batched on the device, ``ueo.fastpath``):

  train  RandomResizedCrop(size, scale 0.5-1, ratio 3/4-4/3) + horizontal flip (p 0.5), the reference's
  eval   the model's own preprocessing (open_clip's: resize the shorter side, center crop, for CLIPs)

both with the model's interpolation, mean and std. ``ViewSpec.train_plan`` and ``ViewSpec.eval_plan`` state
each view as a :class:`Plan` in the original image's pixels, with torchvision's and open_clip's own
arithmetic (their sampling, rounding and crop offsets), so that the fast path, which cuts the views out
of a decoded copy, makes the view the plain path makes from the file. The random train view of sample i in epoch e draws
from its own seed (seed, e, i): a view does not depend on the order, the worker or the process that
makes it, so runs are identical whatever the number of workers or processes, and a resumed run sees
the same views. The batches of an epoch are a permutation seeded by (seed, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms as T

from ..errors import DataError, ModelUnavailableError
from ..images import as_rgb
from .resample import KERNEL_SUPPORT

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images [B, 3, S, S], labels [B], dataset indices [B]
INTERPOLATIONS = tuple(KERNEL_SUPPORT)  # what the fast path's resampler does (PIL does them too)


@dataclass(frozen=True)
class Plan:
    """How one view is made from one image, in the image's own pixel coordinates: the box (left, top,
    right, bottom) is resized to ``size`` (height, width); the resized box's top-left pixel lands at
    ``offset`` (y, x) of the S x S view (negative: cut off by a crop; positive: padding around it, filled
    with the spec's fill colour); then the view is mirrored when ``flip``."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    flip: bool = False


@dataclass(frozen=True)
class ViewSpec:
    """size: input side in pixels. mean/std: per-channel normalisation. interpolation: "bicubic" |
    "bilinear". resize_mode: how the eval view fits the image ("shortest": resize the shorter side and
    center crop; "longest": resize the longer side and pad; "squash": resize both sides).
    crop_scale / crop_ratio / flip: the train view's RandomResizedCrop and flip probability."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    @classmethod
    def of(cls, model: torch.nn.Module) -> ViewSpec:
        """The views of an open_clip model, from its preprocessing configuration."""
        cfg = model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        return cls(
            size=int(size),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
            fill_color=int(cfg.get("fill_color", 0)),
        )

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ModelUnavailableError(
                f"The model's preprocessing asks for {self.interpolation!r} interpolation; ueo's views do "
                f"{' and '.join(INTERPOLATIONS)}."
            )

    @property
    def pil_interpolation(self) -> T.InterpolationMode:
        return T.InterpolationMode.BILINEAR if self.interpolation == "bilinear" else T.InterpolationMode.BICUBIC

    def train_plan(self, generator: torch.Generator, height: int, width: int) -> Plan:
        """The train view of an image of ``height`` x ``width``: RandomResizedCrop + RandomHorizontalFlip with
        torchvision's sampling rule, drawing from ``generator`` what torchvision draws from torch's global
        generator, in the same order (so a generator seeded like the plain path's gives the same view)."""
        scale, ratio = self.crop_scale, self.crop_ratio
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio))  # (float32, as torchvision computes it)
        for _ in range(10):
            target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
            draw = torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
            aspect = torch.exp(draw).item()
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                break
        else:  # torchvision's fallback: a central crop
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        flip = bool(torch.rand(1, generator=generator).item() < self.flip)
        return Plan((left, top, left + w, top + h), (self.size, self.size), (0, 0), flip)

    def eval_plan(self, height: int, width: int) -> Plan:
        """The eval view of an image of ``height`` x ``width``, as open_clip's preprocessing makes it:
        "shortest": torchvision's Resize(S) (the shorter side to S, the longer one int(S * long / short))
        and CenterCrop(S) (offset round((n - S) / 2)); "squash": Resize((S, S)); "longest": the longer
        side to S (open_clip's ResizeKeepRatio: round(side / ratio)), padded to S x S around the centre."""
        size, whole = self.size, (0, 0, width, height)
        if self.resize_mode == "squash":
            return Plan(whole, (size, size))
        if self.resize_mode == "longest":
            ratio = max(height / size, width / size)
            nh, nw = round(height / ratio), round(width / ratio)
            return Plan(whole, (nh, nw), ((size - nh) // 2, (size - nw) // 2))
        if width <= height:
            nh, nw = int(size * height / width), size
        else:
            nh, nw = size, int(size * width / height)
        return Plan(whole, (nh, nw), (-int(round((nh - size) / 2.0)), -int(round((nw - size) / 2.0))))

    def train_transform(self) -> Callable:
        """PIL image -> normalised float tensor [3, S, S]: the train view."""
        return T.Compose(
            [
                T.Lambda(as_rgb),
                T.RandomResizedCrop(
                    self.size, scale=self.crop_scale, ratio=self.crop_ratio, interpolation=self.pil_interpolation
                ),
                T.RandomHorizontalFlip(p=self.flip),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def eval_transform(self) -> Callable:
        """PIL image -> normalised float tensor [3, S, S]: the model's own eval preprocessing (open_clip's),
        after ``pixels.as_rgb`` (what ueo sees of any image: orientation, transparency, bit depth)."""

        cfg = PreprocessCfg(
            size=self.size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            resize_mode=self.resize_mode,
            fill_color=self.fill_color,
        )
        return T.Compose([T.Lambda(as_rgb), image_transform_v2(cfg, is_train=False)])


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the train view of sample ``index`` in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a permutation seeded by (seed, epoch), cut into batches of
    ``batch_size`` (the last partial batch is kept)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples).tolist()
    return [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class SeededViews(torch.utils.data.Dataset):
    """(image, label) items -> (view, label, index), applying ``transform`` to non-tensor images (tensors
    are used as given). With ``seed`` set, sample i of epoch e is transformed under its own seed."""

    def __init__(self, dataset, transform: Callable, seed: int | None = None):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = checked_item(self.dataset[index], index)
        if not torch.is_tensor(image):
            if self.seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(view_seed(self.seed, self.epoch, index))
                    image = self.transform(image)
        return image, label, index


def checked_item(item, index: int, size: int | None = None) -> tuple:
    """(image, label) of a dataset item, refused with a DataError that names it unless it is a pair of a PIL
    image (or a finite float tensor [3, size, size], normalised; returned as float32) and an int label (-1 or
    None: none)."""

    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"Dataset items must be (image, label) pairs; item {index} is {type(item).__name__}.")
    image, label = item[0], item[1]
    if torch.is_tensor(image):
        wanted = f"[3, {size}, {size}]" if size else "[3, S, S]"
        if (
            not image.is_floating_point()
            or image.dim() != 3
            or image.shape[0] != 3
            or (size and image.shape[1:] != (size, size))
        ):
            raise DataError(
                f"item {index}: a tensor image must be a normalised float {wanted}; got {image.dtype} {list(image.shape)}."
            )
        if not torch.isfinite(image).all():
            raise DataError(f"item {index}: the tensor image holds NaN or infinite values.")
        image = image.float()  # float16/float64 images are scored as the model's float32 ones
    elif not isinstance(image, Image.Image):
        hint = " (PIL.Image.fromarray(array) makes one of an HxWx3 uint8 array)" if hasattr(image, "__array__") else ""
        raise DataError(f"item {index}: images are PIL images or tensors [3, S, S]; got {type(image).__name__}{hint}.")
    if label is None:
        label = -1
    if isinstance(label, bool) or (
        not isinstance(label, (int, np.integer)) and not (torch.is_tensor(label) and label.numel() == 1)
    ):
        raise DataError(f"item {index}: the label must be a class index (an int, -1 for none); got {label!r:.40}.")
    return image, int(label)


def collate(items) -> Batch:
    """default_collate, except that a rank's empty share of a small last batch gives empty tensors."""
    if not items:
        return empty_batch()
    return torch.utils.data.default_collate(items)


def empty_batch() -> Batch:
    return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)


class LoadedImages:
    """The plain image source: each view is made from the dataset's item by the PIL transforms, in
    DataLoader workers. The fast path's ``BatchViews`` offers the same two methods."""

    def __init__(self, dataset, spec: ViewSpec, seed: int = 0, num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.seed = dataset, seed
        self.loader_options: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate)
        self.train_views = SeededViews(dataset, spec.train_transform(), seed=seed)
        self.eval_views = SeededViews(dataset, spec.eval_transform())

    def __len__(self):
        return len(self.dataset)

    def train_batches(self, batches: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        """Train views of the given batches of dataset indices, in epoch ``epoch``."""
        self.train_views.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):  # the usual PyTorch hook for datasets whose items depend on it
            self.dataset.set_epoch(epoch)
        batch_lists = [list(b) for b in batches]
        return iter(torch.utils.data.DataLoader(self.train_views, batch_sampler=batch_lists, **self.loader_options))

    def eval_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Eval views of ``indices``, in that order, ``batch_size`` at a time."""
        return iter(
            torch.utils.data.DataLoader(
                self.eval_views, batch_sampler=chunks(indices, batch_size), **self.loader_options
            )
        )
