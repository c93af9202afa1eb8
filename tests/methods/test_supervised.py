import math

import numpy as np
import pytest
import torch

from sslsv.methods.heads import AAMSoftmax


def reference_aam(y, w, labels, s, m):
    """Eq. (12) per sample, with angles from arccos."""
    total = 0.0
    for yi, li in zip(y, labels):
        cos = [float(yi @ wc) / (np.linalg.norm(yi) * np.linalg.norm(wc)) for wc in w]
        theta = math.acos(max(-1.0, min(1.0, cos[li])))
        positive = math.exp(s * math.cos(theta + m))
        negatives = sum(math.exp(s * c) for c_index, c in enumerate(cos) if c_index != li)
        total += -math.log(positive / (positive + negatives))
    return total / len(y)


@pytest.mark.parametrize("s, m", [(30.0, 0.2), (10.0, 0.0), (5.0, 0.4)])
def test_matches_equation_12(s, m):
    torch.manual_seed(0)
    loss_fn = AAMSoftmax(8, 5, s, m).double()
    y = torch.randn(6, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():  # keep every target angle below pi - m, where Eq. (12) applies unmodified
        loss_fn.weight[labels] = y + 0.3 * torch.randn_like(y)
    loss, _ = loss_fn(y, labels)
    expected = reference_aam(y.numpy(), loss_fn.weight.detach().numpy(), labels.numpy(), s, m)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
