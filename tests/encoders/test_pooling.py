import pytest
import torch

from sslsv.encoders.pooling import (
    ContextAttentiveStatisticsPooling,
    LearnableDictionaryEncoding,
    build_pooling,
)
from sslsv.registry import POOLINGS


@pytest.mark.parametrize("name", POOLINGS.names())
def test_every_pooling_builds_from_in_dim_and_matches_out_dim(name):
    pooling = build_pooling(name, 12)
    x = torch.randn(3, 12, 17, requires_grad=True)
    out = pooling(x)
    assert out.shape == (3, pooling.out_dim) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in pooling.parameters())


def _plain_astp(x, w1, b1, w2, b2, global_context):
    """ASTP by loops over the batch, channels and frames (ECAPA-TDNN Eq. 7-10), float64."""
    B, C, T = x.shape
    out = torch.zeros(B, 2 * C, dtype=torch.float64)
    for b in range(B):
        frames = x[b]  # (C, T)
        mu = frames.mean(dim=1)
        sigma = ((frames - mu[:, None]) ** 2).mean(dim=1).sqrt()
        scores = torch.zeros(C, T, dtype=torch.float64)
        for t in range(T):
            h = torch.cat([frames[:, t], mu, sigma]) if global_context else frames[:, t]
            scores[:, t] = w2 @ torch.tanh(w1 @ h + b1) + b2
        for c in range(C):
            a = torch.exp(scores[c]) / torch.exp(scores[c]).sum()
            mean = (a * frames[c]).sum()
            out[b, c] = mean
            out[b, C + c] = ((a * frames[c] ** 2).sum() - mean**2).sqrt()
    return out


@pytest.mark.parametrize("global_context", [True, False])
def test_astp_equals_plain_computation(global_context):
    torch.manual_seed(0)
    pooling = ContextAttentiveStatisticsPooling(5, bottleneck=4, global_context=global_context).double()
    x = torch.randn(2, 5, 7, dtype=torch.float64)
    conv1, conv2 = pooling.attention[0], pooling.attention[2]
    expected = _plain_astp(x, conv1.weight[:, :, 0], conv1.bias, conv2.weight[:, :, 0], conv2.bias, global_context)
    assert torch.allclose(pooling(x), expected, atol=1e-10)
    assert pooling.out_dim == 10


def test_astp_with_constant_attention_is_mean_and_std():
    pooling = ContextAttentiveStatisticsPooling(3, bottleneck=2)
    torch.nn.init.zeros_(pooling.attention[-1].weight)  # equal scores: uniform weights
    x = torch.randn(2, 3, 50)
    out = pooling(x)
    assert torch.allclose(out[:, :3], x.mean(dim=2), atol=1e-5)
    assert torch.allclose(out[:, 3:], x.std(dim=2, unbiased=False), atol=1e-5)


def test_astp_tdnn_variant_has_relu_and_batch_norm():
    pooling = ContextAttentiveStatisticsPooling(8, tdnn=True)
    kinds = [type(m).__name__ for m in pooling.attention]
    assert kinds == ["Conv1d", "ReLU", "BatchNorm1d", "Tanh", "Conv1d"]
    assert sum(p.numel() for p in pooling.parameters()) == (24 * 128 + 128) + 2 * 128 + (128 * 8 + 8)


@pytest.mark.parametrize("l2_normalize", [True, False])
def test_lde_equals_plain_computation(l2_normalize):
    torch.manual_seed(0)
    K, C, T = 4, 3, 6
    pooling = LearnableDictionaryEncoding(C, num_codewords=K, l2_normalize=l2_normalize).double()
    with torch.no_grad():
        pooling.smoothing.copy_(torch.randn(K, dtype=torch.float64))
    x = torch.randn(2, C, T, dtype=torch.float64)
    mu = pooling.codewords
    s = torch.nn.functional.softplus(pooling.smoothing)
    expected = []
    for b in range(2):
        r = x[b].t()[:, None, :] - mu[None]  # (T, K, C) residuals
        logits = -s[None] * (r**2).sum(dim=2)  # (T, K)
        w = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        e = torch.stack([(w[:, k, None] * r[:, k]).sum(0) / w[:, k].sum() for k in range(K)])  # (K, C)
        e = e.flatten()
        expected.append(e / e.norm() if l2_normalize else e)
    assert torch.allclose(pooling(x), torch.stack(expected), atol=1e-10)
    assert pooling.out_dim == K * C


def test_lde_default_has_64_codewords():
    pooling = build_pooling("lde", 32)
    assert pooling.codewords.shape == (64, 32) and pooling.out_dim == 64 * 32


def test_stats_equals_plain_computation():
    """Mean and population std over time per row, std floored at sqrt(1e-5) (theolepage/sslsv StatsPooling)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    x[1, 2] = 3.0  # a constant row: std at the floor
    pooling = build_pooling("stats", 4)
    expected = torch.zeros(2, 8, dtype=torch.float64)
    for b in range(2):
        for c in range(4):
            row = x[b, c].tolist()
            mean = sum(row) / len(row)
            var = sum((v - mean) ** 2 for v in row) / len(row)
            expected[b, c], expected[b, 4 + c] = mean, max(var, 1e-5) ** 0.5
    assert pooling.out_dim == 8 and torch.allclose(pooling(x), expected, atol=1e-12)
