"""Training objectives and confidence scores (docs/method.md). Pure functions on tensors.

Inputs are probabilities ``probs`` [B, K] (rows sum to 1) over the K known classes, computed with the
training logits 100 * cos(f(x), t_k). Entropy uses log(p + 1e-5), as the reference does.
"""

from __future__ import annotations

import torch

EPS = 1e-5
ORACLE_UNKNOWN_WEIGHT = 1e-3


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
