"""The training loop (one screen: lr -> forward -> gather -> objective -> backward -> averaged gradients ->
step -> log) and what it works with (``Run``: the model, its tuned parameters, the data, the weights, the
results and the caller's hooks). ``ueo.training.fit`` sets it up and decides what the run gives.

Under torch.distributed (torchrun) every rank runs the loop with the same data: each global batch is split
across the ranks, and the loss is computed over the whole global batch, as on one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
from tqdm.auto import tqdm

from .checkpoint import make_checkpoint
from .clip import ClipBundle
from .config import PROMPT_CONTEXT, FitConfig, FitResult
from .distributed import any_rank, average_gradients, gather_rows, rank_world
from .errors import DivergedError, Interrupted
from .inference import Outputs, autocast, image_features, outputs_of
from .objectives import entropy_loss, infomax_loss, ueo_loss
from .prompts import PromptLearner
from .state import AdaptedState
from .tuning import adapted_state
from .version import __version__
from .views import epoch_batches


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine annealing from ``base`` to 0 over ``total`` steps, no warm-up (step counts from 0)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def objective(config: FitConfig, probs: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The method's loss over a global batch of probabilities [B, K]."""
    if config.method in ("ueo", "oracle"):
        if weights is None:
            raise RuntimeError("UEO's loss needs the confidence weights; fit computes them before the first step.")
        return ueo_loss(probs, weights, config.trade)
    if config.method == "infomax":
        return infomax_loss(probs, config.trade)
    return entropy_loss(probs)


@dataclass
class Run:
    """What the training loop works with: the model and its tuned parameters, the optimiser, the data,
    the per-sample confidence weights, the results so far, and the caller's hooks."""

    config: FitConfig
    bundle: ClipBundle
    class_names: list[str]
    learner: PromptLearner
    tuned: dict[str, torch.nn.Parameter]
    sources: dict[str, Any]  # image sources: "train" and, when given, "test"
    result: FitResult
    weights: torch.Tensor | None = None  # [N] on the device, None for infomax / entropy
    optimizer: torch.optim.Optimizer | None = None
    save: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    identity: dict = field(default_factory=dict)  # the data the run is made of, recorded in checkpoints
    train_in_test: tuple[torch.Tensor, torch.Tensor] | None = None  # see inference.positions_in
    learning_rates: tuple[float, float] | None = None  # (prompt, norm) of this trajectory, when not the config's
    selection: Any = None  # with select="auto": the candidates (``selection.Selection``), taken at its epochs

    @property
    def device(self) -> torch.device:
        return self.learner.ctx.device

    def text_features(self, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), autocast(self.device, self.config.amp):
            return self.learner.text_features().float()

    def outputs_for(self, split: str) -> Outputs:
        cfg = self.config
        return outputs_of(
            self.bundle.model,
            self.text_features(False),
            self.sources[split],
            batch_size=cfg.eval_batch_size,
            amp=cfg.amp,
            progress=cfg.progress,
            should_stop=self.stop_requested if self.should_stop is not None else None,
        )

    def measure(self, epoch: int, need_train: bool = False) -> Outputs | None:
        """Score the test set (and the adaptation set when asked for or when it has labels); record metrics.
        Returns the adaptation set's outputs when it was scored."""
        self.result.outputs.clear()  # outputs always belong to the latest evaluation
        num_known = len(self.class_names)
        test_out = self.outputs_for("test") if "test" in self.sources else None
        train_out = None
        if need_train or self.config.eval_train:
            train_out = self.result.outputs["train"] = self.train_outputs(test_out)
            if self.config.eval_train and bool((train_out.labels >= 0).any()):
                self.result.evaluations.append({"epoch": epoch, "split": "train", **train_out.metrics(num_known)})
        if test_out is not None:
            self.result.outputs["test"] = test_out
            self.result.evaluations.append({"epoch": epoch, "split": "test", **test_out.metrics(num_known)})
        return train_out

    def train_outputs(self, test_out: Outputs | None) -> Outputs:
        """The adaptation set's outputs: taken from the test set's (scored with the same parameters) when
        every adaptation image is a test image, else scored."""
        if test_out is not None and self.train_in_test is not None:
            return test_out.part(*self.train_in_test)
        return self.outputs_for("train")

    def probabilities(self, images: torch.Tensor, text: torch.Tensor, grad: bool) -> torch.Tensor:
        """softmax(logit_scale * cos) [B, K] of a batch of views; ``grad``: through the image tower too."""
        images = images.to(self.device, non_blocking=True)
        if not len(images):  # a rank without a share of a small last batch still joins the collectives
            return text.sum() * 0 + torch.zeros(0, text.shape[0], device=self.device)
        with torch.set_grad_enabled(grad), autocast(self.device, self.config.amp):
            feats = image_features(self.bundle.model, images)
        return torch.softmax(self.config.logit_scale * feats @ text.T, dim=-1)

    def state(self) -> AdaptedState:
        info = {
            "ueo_version": __version__,
            "open_clip_version": open_clip.__version__,
            "method": self.config.method,
            "torch_version": torch.__version__,
        }
        if self.selection is not None and self.selection.chosen is not None:  # which candidate this state is
            chosen = self.selection.candidates[self.selection.chosen]
            info["selected"] = f"{chosen.describe()}, chosen by {self.config.validator} without labels"
            if chosen.zeroshot:  # its tensors are the model's own: predictions use the zero-shot prompt
                info["zeroshot"] = "true"
        return AdaptedState(
            tensors=adapted_state(self.tuned),
            class_names=list(self.class_names),
            model=self.bundle.name,
            pretrained=self.bundle.pretrained,
            tune=self.config.tune,
            rule=self.result.rule or self.config.rule,
            init=self.config.init,
            info=info,
            weights_identity=self.bundle.identity,
        )

    def checkpoint(self, epoch: int, done_in_epoch: int) -> None:
        if self.save is not None:
            self.save(make_checkpoint(self, epoch=epoch, done_in_epoch=done_in_epoch))

    def stop_requested(self) -> bool:
        return self.should_stop is not None and any_rank(self.should_stop())


def optimizer_for(run: Run) -> torch.optim.SGD:
    """SGD without momentum or weight decay: one group for the context, one for the norm affines."""
    tuned = run.tuned
    lr_prompt, lr_norm = run.learning_rates or (run.config.lr_prompt, run.config.lr_norm)
    groups = []
    if PROMPT_CONTEXT in tuned:
        groups.append({"params": [tuned[PROMPT_CONTEXT]], "lr": lr_prompt, "base_lr": lr_prompt, "name": "prompt"})
    norms = [p for n, p in tuned.items() if n != PROMPT_CONTEXT]
    if norms:
        groups.append({"params": norms, "lr": lr_norm, "base_lr": lr_norm, "name": "norm"})
    return torch.optim.SGD(groups, lr=lr_prompt, momentum=0.0, weight_decay=0.0)


def train_loop(run: Run, first_epoch: int, skip: int) -> None:
    """Epochs ``first_epoch``..``epochs`` (skipping the first ``skip`` steps of the first one)."""
    cfg, result, device = run.config, run.result, run.device
    rank, world = rank_world()
    run.optimizer = optimizer = optimizer_for(run)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tune_norm = any(n != PROMPT_CONTEXT for n in run.tuned)
    fixed_text = None if PROMPT_CONTEXT in run.tuned else run.text_features(False)
    num_samples = len(run.sources["train"])
    steps_per_epoch = math.ceil(num_samples / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for epoch in range(first_epoch, cfg.epochs + 1):
        if cfg.weight_refresh == "epoch" and cfg.method == "ueo" and epoch > 1 and not (epoch == first_epoch and skip):
            run.weights = run.outputs_for("train").scores.to(device)
        last_good = run.state()
        batches = epoch_batches(num_samples, cfg.batch_size, cfg.seed, epoch)  # global batches
        shares = [batch[rank::world] for batch in batches]  # this rank's part of each
        pending: list = []
        bar = progress_bar(cfg, epoch, skip, num_samples, rank)
        train_batches = run.sources["train"].train_batches(shares[skip:], epoch)
        for position, (images, _, index) in enumerate(train_batches, start=skip):
            step = (epoch - 1) * steps_per_epoch + position
            for group in optimizer.param_groups:  # learning rate: cosine per step
                group["lr"] = cosine_lr(group["base_lr"], step, total)
            # forward: this rank's probabilities, then those of the whole global batch (with gradients)
            text = fixed_text if fixed_text is not None else run.text_features(True)
            probs = run.probabilities(images, text, grad=tune_norm)
            counts = [len(batches[position][r::world]) for r in range(world)]
            probs = gather_rows(probs, counts, differentiable=True)
            weights = None if run.weights is None else gather_rows(run.weights[index.to(device)], counts, False)
            loss = objective(cfg, probs, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params)
            optimizer.step()
            # log without a host sync: losses are read back once an epoch
            pending.append((step + 1, epoch, loss.detach(), {g["name"]: g["lr"] for g in optimizer.param_groups}))
            bar.update(len(batches[position]))
            if cfg.progress and rank == 0 and len(pending) % 10 == 1:  # an occasional sync, for the bar only
                bar.set_postfix(loss=f"{loss.item():.4f}")
            # stop poll: ranks agree every 10 steps (one tiny collective), a single process every step
            if (world == 1 or position % 10 == 9) and position + 1 < len(batches) and run.stop_requested():
                commit_losses(pending, result, last_good)
                run.checkpoint(epoch, position + 1)
                bar.close()
                raise Interrupted(f"stopped at step {step + 1} (epoch {epoch}); a checkpoint was saved")
        bar.close()
        skip = 0
        commit_losses(pending, result, last_good)
        selection = run.selection  # a selecting run takes its snapshots instead of evaluating
        due = epoch == cfg.epochs or (cfg.eval_every and epoch % cfg.eval_every == 0)
        if (epoch in selection.epochs) if selection is not None else due:
            try:
                selection.add(run, epoch) if selection is not None else run.measure(epoch)
            except Interrupted:  # resuming redoes this evaluation, then goes on
                run.checkpoint(epoch, len(batches))
                raise
        run.checkpoint(epoch + 1, 0)
        if epoch < cfg.epochs and run.stop_requested():
            raise Interrupted(f"stopped after epoch {epoch}; a checkpoint was saved")


def progress_bar(cfg: FitConfig, epoch: int, skip: int, num_samples: int, rank: int):
    return tqdm(
        total=num_samples,
        initial=min(skip * cfg.batch_size, num_samples),
        unit="img",
        unit_scale=True,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=not cfg.progress or rank > 0,
        leave=False,
    )


def commit_losses(pending: list, result: FitResult, last_good: AdaptedState) -> None:
    """Move the steps' losses into the history (one host sync); stop on a non-finite loss."""
    if not pending:
        return
    values = torch.stack([p[2] for p in pending]).float().cpu().tolist()
    for (step, epoch, _, lrs), value in zip(pending, values):
        if not math.isfinite(value):
            raise DivergedError(
                f"The loss became {value} at step {step} (epoch {epoch}); the adapted state "
                f"from the start of epoch {epoch} is kept.",
                last_good,
            )
        result.history.append(
            {"step": step, "epoch": epoch, "loss": value, "lr_prompt": lrs.get("prompt"), "lr_norm": lrs.get("norm")}
        )
    pending.clear()
