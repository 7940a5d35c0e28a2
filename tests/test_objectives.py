import math

import numpy as np
import pytest
import torch

from ueo.method.objectives import entropy, entropy_loss, infomax_loss, mcm_scores, oracle_weights, ueo_loss

P = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]]
W = [0.5, 0.25, 1.0]


def h(p):  # docs/method.md, written independently in plain Python
    return -sum(q * math.log(q + 1e-5) for q in p)


def test_entropy_hand_computed():
    assert entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(-math.log(0.5 + 1e-5), rel=1e-6)
    assert entropy(torch.tensor([1.0, 0.0], dtype=torch.float64)).item() == pytest.approx(-math.log(1 + 1e-5), rel=1e-9)
    values = entropy(torch.tensor(P, dtype=torch.float64))
    assert values.tolist() == pytest.approx([h(p) for p in P], rel=1e-12)


def test_ueo_loss_hand_computed():
    cond = sum(w * h(p) for w, p in zip(W, P)) / sum(W)
    inv = [1 / w for w in W]
    p_bar = [sum(i * p[k] for i, p in zip(inv, P)) / sum(inv) for k in range(3)]
    for trade in (1.0, 0.3):
        got = ueo_loss(torch.tensor(P, dtype=torch.float64), torch.tensor(W, dtype=torch.float64), trade)
        assert got.item() == pytest.approx(cond - trade * h(p_bar), rel=1e-12)


def test_infomax_and_entropy_hand_computed():
    mean_p = [sum(p[k] for p in P) / 3 for k in range(3)]
    probs = torch.tensor(P, dtype=torch.float64)
    assert infomax_loss(probs).item() == pytest.approx(sum(map(h, P)) / 3 - h(mean_p), rel=1e-12)
    assert infomax_loss(probs, trade=2.0).item() == pytest.approx(sum(map(h, P)) / 3 - 2 * h(mean_p), rel=1e-12)
    assert entropy_loss(probs).item() == pytest.approx(sum(map(h, P)) / 3, rel=1e-12)


def test_ueo_with_equal_weights_is_infomax():
    probs = torch.softmax(torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), dim=-1)
    assert ueo_loss(probs, torch.full((9,), 0.37, dtype=torch.float64)).item() == pytest.approx(
        infomax_loss(probs).item(), rel=1e-12
    )


def test_ueo_weights_direct_conditional_and_marginal_terms():
    """A confident sample (large w) dominates the entropy term and barely shapes the marginal: the gradient
    against the hand-derived one. With h(p) = -p log(p + e) (e = 1e-5, the entropy's guard) and
    h'(p) = -log(p + e) - p / (p + e): dL/dp_ik = (w_i / sum w) h'(p_ik) - (1/w_i) / sum(1/w) h'(pbar_k)."""
    q = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    w = np.array([1.0, 1e-3, 1e-3])
    probs = torch.tensor(q, requires_grad=True)
    ueo_loss(probs, torch.tensor(w)).backward()
    inverse = (1 / w) / (1 / w).sum()
    pbar = (inverse[:, None] * q).sum(axis=0)

    def slope(p):
        return -np.log(p + 1e-5) - p / (p + 1e-5)

    want = (w / w.sum())[:, None] * slope(q) - inverse[:, None] * slope(pbar)[None, :]
    assert np.allclose(probs.grad.numpy(), want, rtol=1e-9, atol=1e-12)
    grads = np.abs(want).sum(axis=1)
    assert grads[0] > grads[1] and grads[0] > grads[2]


def test_mcm_scores_hand_computed():
    cos = torch.tensor([[0.3, 0.1], [0.2, 0.2]])
    e = math.exp(0.2)
    assert mcm_scores(cos).tolist() == pytest.approx([e / (e + 1), 0.5], rel=1e-6)


def test_oracle_weights():
    assert oracle_weights(torch.tensor([0, 2, 3, -1]), num_known=3).tolist() == pytest.approx([1, 1, 1e-3, 1e-3])
