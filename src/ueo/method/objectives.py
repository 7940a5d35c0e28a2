"""Training objectives and confidence scores (docs/method.md). Pure functions on tensors.

Inputs are probabilities ``probs`` [B, K] (rows sum to 1) over the K known classes, computed with the
training logits 100 * cos(f(x), t_k). Entropy uses log(p + 1e-5), as the reference does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
ORACLE_UNKNOWN_WEIGHT = 1e-3
POUF_IM_WEIGHT = 0.3  # POUF's weight of its InfoMax term beside the transport term (weight 1)
TPT_VIEWS, TPT_KEEP = 64, 0.1  # TPT: views of each test image (the original among them), fraction kept


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log(p_k + 1e-5) along the last axis. [..., K] -> [...]."""
    return -(probs * torch.log(probs + EPS)).sum(dim=-1)


def ueo_loss(probs: torch.Tensor, weights: torch.Tensor, trade: float = 1.0) -> torch.Tensor:
    """Universal Entropy Optimization.

    L = sum_i w_i H(p_i) / sum_i w_i  -  trade * H(p_bar),  p_bar = sum_i (1/w_i) p_i / sum_i (1/w_i)
    weights: [B] positive confidence weights (MCM scores of the zero-shot model).
    """
    w = weights.to(probs.dtype)
    conditional = (w * entropy(probs)).sum() / w.sum()
    inverse = 1.0 / w
    marginal = (inverse[:, None] * probs).sum(dim=0) / inverse.sum()
    return conditional - trade * entropy(marginal)


def infomax_loss(probs: torch.Tensor, trade: float = 1.0) -> torch.Tensor:
    """InfoMax (SHOT-IM): mean_i H(p_i) - trade * H(mean_i p_i)."""
    return entropy(probs).mean() - trade * entropy(probs.mean(dim=0))


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """Entropy minimisation (TENT-style): mean_i H(p_i)."""
    return entropy(probs).mean()


def transport_loss(cosines: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """POUF's transport between the batch's images and the class texts, with cost C = 1 - cos [B, K]:
    mean_i sum_k C_ik softmax_k(s cos)_ik  +  mean_k sum_i C_ik softmax_i(s cos)_ik (classes per image, then
    images per class)."""
    cost, logits = 1.0 - cosines, logit_scale * cosines
    to_classes = (cost * logits.softmax(dim=1)).sum(dim=1).mean()
    to_images = (cost * logits.softmax(dim=0)).sum(dim=0).mean()
    return to_classes + to_images


def pouf_loss(cosines: torch.Tensor, logit_scale: float, trade: float = 1.0) -> torch.Tensor:
    """POUF: transport + 0.3 * InfoMax over a batch of raw cosines [B, K]."""
    probs = torch.softmax(logit_scale * cosines, dim=-1)
    return transport_loss(cosines, logit_scale) + POUF_IM_WEIGHT * infomax_loss(probs, trade)


def pseudo_label_loss(cosines: torch.Tensor, targets: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """UPL: cross-entropy of softmax(s cos) [B, K] against pseudo-labels [B]."""
    return F.cross_entropy(logit_scale * cosines, targets)


def upl_pseudo_labels(probs: torch.Tensor, per_class: int) -> torch.Tensor:
    """UPL's pseudo-labels of the zero-shot probabilities [N, K]: for each class, the ``per_class`` images
    predicted as it with the highest probability (ties: the earlier image first; a class predicted for fewer
    images keeps them all). [N] class indices, -1 for images not kept."""
    probs = probs.float().cpu()
    confidence, predicted = probs.max(dim=1)
    targets = torch.full((len(probs),), -1, dtype=torch.long)
    for k in range(probs.shape[1]):
        members = torch.nonzero(predicted == k).flatten().numpy()
        order = np.argsort(-confidence[members].numpy(), kind="stable")
        targets[torch.from_numpy(members[order[:per_class]])] = k
    return targets


def confident_views(probs: torch.Tensor, keep: float = TPT_KEEP) -> torch.Tensor:
    """TPT: the views [V, K] whose predictions have the lowest entropy, int(keep * V) of them (at least one)."""
    count = max(1, int(keep * len(probs)))
    return torch.argsort(entropy(probs), stable=True)[:count]


def marginal_entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """TPT: the entropy of the views' averaged prediction (exact: -sum p log p, no 1e-5)."""
    mean = probs.mean(dim=0)
    return -(mean * torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))).sum()


def mcm_scores(logits: torch.Tensor) -> torch.Tensor:
    """Maximum concept matching: max_k softmax(logits)_k at temperature 1. [B, K] -> [B].

    Pass RAW cosines (not 100 * cos): higher = more likely a known class.
    """
    return torch.softmax(logits.float(), dim=-1).max(dim=-1).values


def oracle_weights(labels: torch.Tensor, num_known: int) -> torch.Tensor:
    """Oracle weights (needs labels): 1 for known-class samples (0 <= y < K), 1e-3 otherwise."""
    known = (labels >= 0) & (labels < num_known)
    return torch.where(
        known,
        torch.ones_like(labels, dtype=torch.float32),
        torch.full_like(labels, ORACLE_UNKNOWN_WEIGHT, dtype=torch.float32),
    )
