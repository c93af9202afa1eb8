"""The settings that follow the review's authors (theolepage/sslsv) rather than a literal reading of the review, and
the options that select the alternative: CPC's dot-product logits and single direction, DINO's BN head (grouped per
crop length), the teacher-entropy collapse thresholds of Table 9 / Figure 4, one MUSAN speech file per view."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from sslsv.audio.augment import AugmentationSources
from sslsv.config import AugmentationConfig, CollapseConfig, ConfigError, load_config
from sslsv.methods.cpc import CPC, CPCConfig, CPCLoss
from sslsv.methods.dino import DINO, DINO_RULES, DINOConfig, _per_length
from sslsv.training.diagnostics import CollapseDetector
from tests.methods.method_helpers import one_thread, random_batch, tiny_info, tiny_speaker_model  # noqa: F401

# ------------------------------------------------------------------------------------------------------ CPC


def plain_dot_cpc(p: np.ndarray, y: np.ndarray, tau: float) -> float:
    """The authors' CPCLoss / InfoNCELoss(temperature=1.0, normalize=False): for each step t, cross-entropy of the
    raw dot products p_i . y_j / tau with the positive j = i; averaged over the steps."""
    b, k, _ = p.shape
    total = 0.0
    for t in range(k):
        for i in range(b):
            logits = np.array([p[i, t] @ y[j, t] / tau for j in range(b)])
            top = logits.max()
            total += -(logits[i] - top - math.log(np.exp(logits - top).sum()))
    return total / (b * k)


@pytest.mark.parametrize("batch, steps, dim, tau", [(2, 1, 3, 1.0), (6, 4, 8, 1.0), (4, 3, 6, 0.5)])
def test_cpc_dot_product_logits_equal_a_plain_computation(batch, steps, dim, tau):
    g = torch.Generator().manual_seed(batch + steps)
    p = 3 * torch.randn(batch, steps, dim, generator=g, dtype=torch.float64)  # not unit norm: dot != cosine
    y = 3 * torch.randn(batch, steps, dim, generator=g, dtype=torch.float64)
    loss, logits = CPCLoss(tau, "dot")(p, y)
    assert loss.item() == pytest.approx(plain_dot_cpc(p.numpy(), y.numpy(), tau), rel=1e-9)
    expected_logits = torch.einsum("bkc,nkc->kbn", p, y) / tau
    torch.testing.assert_close(logits, expected_logits, rtol=1e-12, atol=0)
    cosine, _ = CPCLoss(tau, "cosine")(p, y)
    assert abs(cosine.item() - loss.item()) > 1e-3  # the option is a different loss


def test_cpc_defaults_are_the_authors_and_cosine_is_an_option():
    cfg = CPCConfig()
    assert (cfg.logits, cfg.temperature, cfg.symmetric, cfg.cross_view) == ("dot", 1.0, False, True)
    assert load_config("configs/cpc/fast_resnet34.yml").method.options.logits == "dot"
    assert load_config("configs/cpc/fast_resnet34.yml", ["method.logits=cosine"]).method.options.logits == "cosine"
    with pytest.raises(ConfigError, match="method.logits"):
        load_config("configs/cpc/fast_resnet34.yml", ["method.logits=euclidean"])
    # Cosine logits at tau = 1 lie in [-1, 1]: the loss cannot go below log(1 + (N - 1) e^-2) (3.57 nats at
    # N = 256), even for perfectly separated predictions, which dot products score near 0.
    n = 256
    separated = 10 * torch.eye(n, dtype=torch.float64)[:, None, :]  # p_i = y_i, orthogonal to every other y_j
    floor = math.log(1 + (n - 1) * math.exp(-2))
    assert floor == pytest.approx(3.57, abs=0.005)
    assert CPCLoss(1.0, "cosine")(separated, separated)[0].item() > floor
    assert CPCLoss(1.0, "dot")(separated, separated)[0].item() < 0.02


def test_cpc_predicts_one_direction_unless_symmetric():
    batch = random_batch(batch=3, lengths=(0.3, 0.3))
    one = CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=8), tiny_info())._frames(batch)
    both = CPC(tiny_speaker_model(), CPCConfig(aggregator_dim=8, symmetric=True), tiny_info())._frames(batch)
    assert len(one) == 1 and len(both) == 2
    torch.testing.assert_close(both[0][0], one[0][0])  # anchor context -> positive targets first
    assert both[1][0] is both[0][1] and both[1][1] is both[0][0]


# ----------------------------------------------------------------------------------------------------- DINO


def test_dino_head_is_the_authors():
    """Linear-BN-GELU, Linear-BN-GELU, Linear to the bottleneck, L2, weight-normalised last layer (unit rows,
    no bias): theolepage/sslsv DINOHead. The shipped DINO configs resolve to it."""
    assert DINOConfig().head_batch_norm is True
    for path in ("configs/dino/fast_resnet34.yml", "configs/dino/ecapa.yml", "configs/dino/fast_resnet34_demo.yml"):
        assert load_config(path).method.options.head_batch_norm is True, path
    method = DINO(tiny_speaker_model(), DINOConfig(hidden_dim=32, bottleneck_dim=8, out_dim=64), tiny_info())
    kinds = [type(m) for m in method.head.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear]
    assert [m.out_features for m in method.head.mlp if isinstance(m, nn.Linear)] == [32, 32, 8]
    assert [type(m) for m in method.teacher_head.mlp] == kinds
    last = method.head.last_layer
    assert not hasattr(last, "bias") or last.bias is None
    z = torch.randn(5, 8)
    rows = nn.functional.normalize(last.weight_v, dim=1)
    torch.testing.assert_close(last(z), z @ rows.T)  # weight norm with the norm fixed to 1 (norm_last_layer)
    no_bn = DINO(tiny_speaker_model(), DINOConfig(hidden_dim=32, bottleneck_dim=8, out_dim=64, head_batch_norm=False),
                 tiny_info())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in no_bn.head.mlp)


def test_dino_student_head_sees_each_crop_length_in_one_pass():
    """As the authors' DINO.forward (global crops together, local crops together): the head's BN statistics span
    every crop of one length, not a single view."""
    calls = []

    def network(x):
        calls.append(x.shape[0])
        return 2 * x

    views = [torch.zeros(4, 800)] * 2 + [torch.zeros(4, 400)] * 3
    inputs = [torch.full((4, 3), float(i)) for i in range(5)]
    outputs = _per_length(network, inputs, views)
    assert sorted(calls) == [8, 12]
    for i, out in enumerate(outputs):
        torch.testing.assert_close(out, 2 * inputs[i])
    method = DINO(tiny_speaker_model(), DINOConfig(hidden_dim=32, bottleneck_dim=8, out_dim=64), tiny_info())
    sizes = []
    method.head.mlp[1].register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    method.train()
    method(random_batch(4, (0.3, 0.3, 0.2, 0.2, 0.2, 0.2)))
    assert sorted(sizes) == [8, 16]  # student: 2 global x 4, 4 local x 4 (the teacher head has its own BN)


def _stream(detector: CollapseDetector, entropy: float, usage: float, steps: int, noise: float = 0.05) -> list:
    """Feed `steps` synthetic steps: entropies with relative noise around the given values, at most log(65 536)."""
    rng = np.random.default_rng(0)
    jitter = lambda value: min(value * (1 + noise * rng.uniform(-1, 1)), math.log(65536))  # noqa: E731
    return [detector.check(step, {"teacher_entropy": jitter(entropy), "teacher_usage_entropy": jitter(usage)})
            for step in range(steps)]


def test_teacher_entropy_rules_flag_both_collapses_of_the_review():
    """Review Table 9 (teacher entropy at the end of training, D_e = 65 536): tau_t = 0.01 collapsed at 0.02
    (23.18 % EER); 0.03 -> 0.04, 0.04 -> 0.07, 0.05 -> 0.28, 0.07 -> 3.18, 0.04 -> 0.07 warm-up -> 3.90 are working
    runs. Figure 4(b): without sharpening the entropy approaches log(65 536) = 11.09 (uniform teacher)."""
    bound = math.log(65536)
    patience = CollapseConfig().patience_steps

    def detector():
        return CollapseDetector(CollapseConfig(), DINO_RULES, {"teacher_entropy": bound})

    usage = 9.0  # samples on different outputs: centering works
    one_hot = _stream(detector(), 0.02, usage, patience)
    assert one_hot[:-1] == [None] * (patience - 1)
    assert "one-hot teacher" in one_hot[-1] and "tau_t" in one_hot[-1]
    uniform = _stream(detector(), 11.08, 11.09, patience, noise=0.002)
    assert uniform[:-1] == [None] * (patience - 1) and "uniform" in uniform[-1]
    for healthy in (0.04, 0.07, 0.28, 3.18, 3.90):
        assert _stream(detector(), healthy, usage, 3 * patience) == [None] * (3 * patience), healthy
    # A collapse that recovers before the patience runs out is not reported.
    d = detector()
    assert _stream(d, 0.02, usage, patience - 1) == [None] * (patience - 1)
    assert _stream(d, 0.07, usage, patience) == [None] * patience


# ------------------------------------------------------------------------------------------------ augmentation


@pytest.fixture(scope="module")
def musan(tmp_path_factory):
    root = tmp_path_factory.mktemp("musan_fidelity")
    rng = np.random.default_rng(0)
    for category in ("noise", "music", "speech"):
        folder = root / "musan" / category
        folder.mkdir(parents=True)
        for k in range(8):
            sf.write(folder / f"{category}{k}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return root


def _speech_draws(config: AugmentationConfig, root) -> list[list[dict]]:
    sources = AugmentationSources(config, root, 16000)
    draws = []
    for seed in range(90):
        details = {}
        sources.draw(np.random.default_rng(seed), 4000, details)
        if details["components"][0]["category"] == "speech":
            draws.append(details["components"])
    return draws


def test_musan_speech_is_one_file_by_default_and_babble_is_an_option(musan):
    assert AugmentationConfig().babble_speakers == (1, 1)
    for path in ("configs/simclr/fast_resnet34.yml", "configs/dino/ecapa.yml"):
        cfg = load_config(path).augmentation
        assert (cfg.babble_speakers, cfg.snr_noise, cfg.snr_music, cfg.snr_speech) == (
            (1, 1), (0.0, 15.0), (5.0, 15.0), (13.0, 20.0)), path
    default = _speech_draws(AugmentationConfig(strategy="noise", musan_dir="musan", rir_dir=None), musan)
    assert len(default) > 10 and all(len(components) == 1 for components in default)
    assert all(13.0 <= c[0]["snr"] <= 20.0 for c in default)
    babble = _speech_draws(AugmentationConfig(strategy="noise", musan_dir="musan", rir_dir=None,
                                              babble_speakers=(3, 7)), musan)
    assert babble and all(3 <= len(components) <= 7 for components in babble)
    assert max(len(components) for components in babble) > 3
