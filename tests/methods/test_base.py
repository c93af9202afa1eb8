"""The method base helpers: encode_views groups views of equal length into one pass, in order."""
import torch

from sslsv.methods.base import encode_views
from sslsv.methods.heads import ProjectorConfig, build_projector


def test_encode_views_one_pass_per_length_in_order():
    calls = []

    def network(x):
        calls.append(tuple(x.shape))
        return x[:, :2] * 10

    views = [torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 6)]
    outputs = encode_views(network, views)
    assert calls == [(6, 8), (6, 4), (3, 6)]  # one pass per length, even for non-consecutive views
    assert all(torch.equal(out, view[:, :2] * 10) for out, view in zip(outputs, views))


def test_one_pass_gives_batch_norm_the_whole_batch():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(4)
    x1, x2 = torch.randn(5, 4), torch.randn(5, 4) + 3.0
    z1, z2 = encode_views(bn, [x1, x2])
    assert torch.allclose(torch.cat([z1, z2]), bn(torch.cat([x1, x2])), atol=1e-6)
    assert z2.mean() > 0.5 > -0.5 > z1.mean()  # normalised together, not each view on its own


def test_build_projector_reports_its_output_size():
    projector, dim = build_projector(ProjectorConfig(hidden_dim=16, out_dim=12), 8)
    assert dim == 12 and projector(torch.randn(4, 8)).shape == (4, 12)
    identity, dim = build_projector(ProjectorConfig(enabled=False, out_dim=12), 8)
    assert dim == 8 and isinstance(identity, torch.nn.Identity)
