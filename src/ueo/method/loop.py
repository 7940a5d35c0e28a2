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

from ..config import PROMPT_CONTEXT, FitConfig, FitResult
from ..errors import DivergedError, Interrupted
from ..model import AdaptedState, ClipBundle, PromptLearner, adapted_state, batch_statistics
from ..version import __version__
from ..views import empty_batch, epoch_batches
from .checkpoint import make_checkpoint
from .distributed import any_rank, average_gradients, gather_rows, rank_world
from .inference import Outputs, autocast, image_features, outputs_of
from .objectives import entropy_loss, infomax_loss, pouf_loss, pseudo_label_loss, ueo_loss

INVERSE_GAMMA, INVERSE_POWER = 0.0002, 0.75  # POUF's schedule: lr (1 + gamma step)^-power


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine annealing from ``base`` to 0 over ``total`` steps, no warm-up (step counts from 0)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def learning_rate(config: FitConfig, base: float, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of ``step`` (from 0): ``warmup_lr`` during the warm-up epochs, then the schedule
    ("cosine" over all ``total`` steps, as if from step 0; "inverse"; "constant")."""
    if step < config.warmup_epochs * steps_per_epoch:
        return config.warmup_lr
    if config.schedule == "cosine":
        return cosine_lr(base, step, total)
    if config.schedule == "inverse":
        return base * (1.0 + INVERSE_GAMMA * step) ** -INVERSE_POWER
    return base


def objective(
    config: FitConfig, cosines: torch.Tensor, weights: torch.Tensor | None, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """The method's loss over a global batch of raw cosines [B, K] (its probabilities: softmax(s cos))."""
    if config.method == "pouf":
        return pouf_loss(cosines, config.logit_scale)
    if config.method == "upl":
        if targets is None:
            raise RuntimeError("UPL's loss needs the pseudo-labels; fit computes them before the first step.")
        return pseudo_label_loss(cosines, targets, config.logit_scale)
    probs = torch.softmax(config.logit_scale * cosines, dim=-1)
    if config.method in ("ueo", "oracle"):
        if weights is None:
            raise RuntimeError("UEO's loss needs the confidence weights; fit computes them before the first step.")
        return ueo_loss(probs, weights, config.trade)
    if config.method == "infomax":
        return infomax_loss(probs, config.trade)
    return entropy_loss(probs)  # entropy, and tent (of each batch, with its statistics)


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
    targets: torch.Tensor | None = None  # UPL's pseudo-labels [N] on the device (-1: not trained on)
    batch_stats: bool = False  # BatchNorm normalises with each batch's statistics (Tent, once adapting)
    optimizer_state: dict[str, dict[str, torch.Tensor]] | None = None  # a resumed run's, per tuned parameter
    member: int = 0  # UPL's ensemble: the context being learned (its batches drawn from seed + member)
    contexts: list[torch.Tensor] = field(default_factory=list)  # UPL's ensemble: the contexts learned so far
    test_time: Any = None  # TPT's per-image tuning of the test set's outputs (``inference.TestTimePrompt``)
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

    @property
    def members(self) -> list[int] | None:
        """The adaptation images that train (UPL's pseudo-labelled ones); None: all."""
        return None if self.targets is None else torch.nonzero(self.targets >= 0).flatten().tolist()

    def outputs_for(self, split: str) -> Outputs:
        cfg = self.config
        with batch_statistics(self.bundle.model, self.batch_stats):
            return outputs_of(
                self.bundle.model,
                self.text_features(False),
                self.sources[split],
                batch_size=cfg.eval_batch_size,
                amp=cfg.amp,
                progress=cfg.progress,
                should_stop=self.stop_requested if self.should_stop is not None else None,
                test_time=self.test_time if split == "test" else None,
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

    def cosines(self, images: torch.Tensor, text: torch.Tensor, grad: bool) -> torch.Tensor:
        """Raw cosines [B, K] of a batch of views; ``grad``: through the image tower too."""
        images = images.to(self.device, non_blocking=True)
        if not len(images):  # a rank without a share of a small last batch still joins the collectives
            return text.sum() * 0 + torch.zeros(0, text.shape[0], device=self.device)
        with torch.set_grad_enabled(grad), autocast(self.device, self.config.amp):
            feats = image_features(self.bundle.model, images)
        return feats @ text.T

    def state(self) -> AdaptedState:
        info = {
            "ueo_version": __version__,
            "open_clip_version": open_clip.__version__,
            "method": self.config.method,
            "torch_version": torch.__version__,
        }
        if self.config.method == "tpt":  # its views are drawn from the run's seed
            info["seed"] = str(self.config.seed)
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


def optimizer_for(run: Run) -> torch.optim.Optimizer:
    """The method's optimiser (UEO's: SGD without momentum or weight decay): one group for the context, one
    for the norm affines; a resumed run's momentum restored."""
    tuned, cfg = run.tuned, run.config
    lr_prompt, lr_norm = run.learning_rates or (cfg.lr_prompt, cfg.lr_norm)
    groups = []
    if PROMPT_CONTEXT in tuned:
        groups.append({"params": [tuned[PROMPT_CONTEXT]], "lr": lr_prompt, "base_lr": lr_prompt, "name": "prompt"})
    norms = [p for n, p in tuned.items() if n != PROMPT_CONTEXT]
    if norms:
        groups.append({"params": norms, "lr": lr_norm, "base_lr": lr_norm, "name": "norm"})
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr_prompt, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            groups, lr=lr_prompt, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    for name, state in (run.optimizer_state or {}).items():
        param = tuned[name]
        optimizer.state[param] = {k: v.to(param.device, param.dtype) for k, v in state.items()}
    run.optimizer_state = None
    return optimizer


def adaptation_batches(run: Run, shares: list, epoch: int):
    """This rank's batches of views: the train views (augmented); Tent's the eval views, as it sees its test
    batches."""
    source = run.sources["train"]
    if run.config.method != "tent":
        yield from source.train_batches(shares, epoch)
        return
    for share in shares:
        if share:
            yield from source.eval_batches(share, len(share))
        else:
            yield empty_batch()


def train_loop(run: Run, first_epoch: int, skip: int) -> None:
    """Epochs ``first_epoch``..``epochs`` (skipping the first ``skip`` steps of the first one)."""
    with batch_statistics(run.bundle.model, run.batch_stats):
        run_epochs(run, first_epoch, skip)


def run_epochs(run: Run, first_epoch: int, skip: int) -> None:
    cfg, result, device = run.config, run.result, run.device
    rank, world = rank_world()
    run.optimizer = optimizer = optimizer_for(run)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tune_norm = any(n != PROMPT_CONTEXT for n in run.tuned)
    fixed_text = None if PROMPT_CONTEXT in run.tuned else run.text_features(False)
    members = run.members
    num_samples = len(members) if members is not None else len(run.sources["train"])
    steps_per_epoch = math.ceil(num_samples / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for epoch in range(first_epoch, cfg.epochs + 1):
        if cfg.weight_refresh == "epoch" and cfg.method == "ueo" and epoch > 1 and not (epoch == first_epoch and skip):
            run.weights = run.outputs_for("train").scores.to(device)
        last_good = run.state()
        batches = epoch_batches(num_samples, cfg.batch_size, cfg.seed + run.member, epoch)  # global batches
        if members is not None:  # of the images that train
            batches = [[members[i] for i in batch] for batch in batches]
        shares = [batch[rank::world] for batch in batches]  # this rank's part of each
        pending: list = []
        bar = progress_bar(cfg, epoch, skip, num_samples, rank)
        for position, (images, _, index) in enumerate(adaptation_batches(run, shares[skip:], epoch), start=skip):
            step = (epoch - 1) * steps_per_epoch + position
            for group in optimizer.param_groups:  # learning rate: per step
                group["lr"] = learning_rate(cfg, group["base_lr"], step, total, steps_per_epoch)
            # forward: this rank's cosines, then those of the whole global batch (with gradients)
            text = fixed_text if fixed_text is not None else run.text_features(True)
            cosines = run.cosines(images, text, grad=tune_norm)
            counts = [len(batches[position][r::world]) for r in range(world)]
            cosines = gather_rows(cosines, counts, differentiable=True)
            index = index.to(device)
            weights = None if run.weights is None else gather_rows(run.weights[index], counts, False)
            targets = None if run.targets is None else gather_rows(run.targets[index], counts, False)
            loss = objective(cfg, cosines, weights, targets)
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
        disable=None if cfg.progress and rank == 0 else True,  # (a bar on a terminal only)
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
