from pathlib import Path

import pytest
import torch

from sslsv.config import ConfigError, FeaturesConfig, Spec, load_config
from sslsv.encoders.base import build_encoder, build_speaker_model, count_parameters
from sslsv.encoders.fast_resnet34 import FastResNet34, FastResNet34Config
from sslsv.encoders.profile import profile_encoder
from sslsv.encoders.resnet_multiscale import FastResNet34MSConfig, FastResNet34MultiScale

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(base_width=4, embed_dim=32)

VARIANTS = [
    dict(aggregation="msea", fpm="none"),
    dict(aggregation="msea", fpm="fpm_b"),
    dict(aggregation="msea", fpm="fpm_tc"),
    dict(aggregation="msfa", fpm="none"),
    dict(aggregation="msfa", fpm="fpm_b"),
    dict(aggregation="msfa", fpm="fpm_tc"),
    dict(aggregation="msea", fpm="fpm_tc", pooling="lde", pool_channels=16, share_pooling=True),
    dict(aggregation="msea", fpm="fpm_b", pooling="gap", stages=(1, 2, 3, 4)),
    dict(aggregation="msfa", fpm="none", pooling="asp", stages=(1, 3)),
    dict(aggregation="msea", fpm="fpm_tc", pooling="astp", stages=(3, 4)),
]


def _id(v):
    return "-".join(f"{k}={v}" for k, v in v.items())


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_forward_backward_reaches_every_parameter(variant):
    torch.manual_seed(0)
    model = FastResNet34MultiScale(FastResNet34MSConfig(**variant, **SMALL), in_features=24)
    x = torch.randn(3, 24, 45)  # odd length: the pyramid must realign ceil-divided sizes
    out = model(x)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("seconds", [1.0, 2.0, 7.3])
@pytest.mark.parametrize("variant", [VARIANTS[2], VARIANTS[5]], ids=_id)
def test_waveform_shapes_for_several_lengths(variant, seconds):
    model = build_speaker_model(Spec("fast_resnet34_ms", FastResNet34MSConfig(**variant, embed_dim=64)),
                                FeaturesConfig(n_mels=40)).eval()
    with torch.no_grad():
        wave = torch.randn(2, int(seconds * 16000))
        out = model(wave)
        frames = model.forward_frames(wave)
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    T = int(seconds * 16000) // 160 + 1
    channels = 96 if variant["aggregation"] == "msfa" else 32  # 3 x 32 concatenated, or the top P map
    assert frames.shape == (2, channels, -(-T // 4))


def test_pyramid_maps_keep_stage_resolutions():
    model = FastResNet34MultiScale(FastResNet34MSConfig(fpm="fpm_tc", stages=(1, 2, 3, 4)), in_features=40)
    maps = model.forward_maps(torch.randn(2, 40, 101))
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 20, 101), (32, 10, 51), (32, 5, 26), (32, 5, 26)]


def test_trunk_is_the_fast_resnet34_trunk():
    ms = FastResNet34MultiScale(FastResNet34MSConfig(stages=(4,), aggregation="msea"), in_features=40)
    single = FastResNet34(FastResNet34Config(), in_features=40)
    # stage 4 alone through SAP -> 512 is the single-scale model, parameter for parameter
    assert count_parameters(ms) == count_parameters(single) == 1_437_078
    ms.load_state_dict({k.replace("pooling.", "poolings.0."): v for k, v in single.state_dict().items()})
    x = torch.randn(2, 40, 80)
    ms.eval(), single.eval()
    assert torch.allclose(ms(x), single(x), atol=1e-6)


@pytest.mark.parametrize(
    "variant, expected",
    [(dict(), 1_491_542), (dict(fpm="fpm_b"), 1_442_326), (dict(fpm="fpm_tc"), 1_451_574),
     (dict(aggregation="msfa"), 1_529_462), (dict(aggregation="msfa", fpm="fpm_tc"), 1_466_966)],
)
def test_parameter_counts_and_fpm_is_smaller(variant, expected):
    """Counts measured from this code (docs/encoders.md); the paper's Table 2 shows the same ordering."""
    model = FastResNet34MultiScale(FastResNet34MSConfig(**variant), in_features=40)
    assert count_parameters(model) == expected


def test_profile_matches_fast_resnet34_reference_and_counts_transposed_convs():
    """Fast ResNet-34 at 40 mels: 0.447 GMACs per 2-s view (reference arith)."""
    single = profile_encoder(FastResNet34(FastResNet34Config(), in_features=40), seconds=2.0, n_mels=40)
    assert abs(single["macs"] / 0.447e9 - 1) < 0.005
    b = profile_encoder(FastResNet34MultiScale(FastResNet34MSConfig(fpm="fpm_b"), 40), seconds=2.0, n_mels=40)
    tc = profile_encoder(FastResNet34MultiScale(FastResNet34MSConfig(fpm="fpm_tc"), 40), seconds=2.0, n_mels=40)
    # FPM-TC = FPM-B + one 32->32 3x3 transposed conv from stage 3 (5 x 51 frames) into stage 2 (10 x 101)
    assert tc["macs"] - b["macs"] == 5 * 51 * 32 * 32 * 9


def test_config_file_builds_fpm_model():
    for path in ("simclr/fast_resnet34_fpm.yml", "simclr/fast_resnet34_fpm_demo.yml"):
        config = load_config(ROOT / "configs" / path)
        assert config.encoder.name == "fast_resnet34_ms"
        options = config.encoder.options
        got = (options.aggregation, options.fpm, options.stages, options.fpm_channels, options.pool_conv)
        assert got == ("msea", "fpm_tc", (2, 3, 4), 32, True)
        encoder = build_encoder(config.encoder, config.features)
        assert count_parameters(encoder) == 1_451_574 + 3 * (32 * 32 + 32) == 1_454_742


@pytest.mark.parametrize(
    "overrides, message",
    [(["encoder.stages=[3, 2]"], "encoder.stages: must be increasing"),
     (["encoder.stages=[5]"], "encoder.stages"),
     (["encoder.fpm=fpm_x"], "encoder.fpm"),
     (["encoder.pooling=ldee"], "encoder.pooling: unknown pooling"),
     (["encoder.aggregation=msfa"], "encoder.pool_conv: only used with aggregation 'msea'"),
     (["encoder.aggregation=msfa", "encoder.pool_conv=false", "encoder.pool_channels=8"], "encoder.pool_channels"),
     (["encoder.share_pooling=true", "encoder.fpm=none"], "encoder.share_pooling: needs equal widths")],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/simclr/fast_resnet34_fpm.yml", overrides)


@pytest.mark.parametrize("fpm, widths", [("fpm_tc", [8, 8, 8]), ("none", [8, 16, 32])])
def test_pool_conv_is_a_1x1_conv_before_each_pooling(fpm, widths):
    """MSEA with 1x1 convs before pooling (FPM paper section 3.1): one Conv2d(c, c, 1) per scale, keeping each
    map's width; the pooled sequences are the frequency means of those convs applied to the maps."""
    torch.manual_seed(0)
    small = dict(SMALL, fpm=fpm, fpm_channels=8, layers=(1, 1, 1, 1))
    plain = FastResNet34MultiScale(FastResNet34MSConfig(**small), in_features=24)
    model = FastResNet34MultiScale(FastResNet34MSConfig(**small, pool_conv=True), in_features=24).eval()
    convs = list(model.projections)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(w, w, (1, 1)) for w in widths]
    assert count_parameters(model) - count_parameters(plain) == sum(w * w + w for w in widths)
    x = torch.randn(2, 24, 30)
    with torch.no_grad():
        maps = model.forward_maps(x)
        scales = model.forward_scales(x)
    for conv, m, s in zip(convs, maps, scales):
        expected = (torch.einsum("oc,bcft->boft", conv.weight[:, :, 0, 0], m) + conv.bias[:, None, None]).mean(2)
        assert s.shape == (2, m.shape[1], m.shape[3]) and torch.allclose(s, expected, atol=1e-5)


def test_pool_channels_sets_the_pool_conv_width():
    model = FastResNet34MultiScale(FastResNet34MSConfig(fpm="fpm_tc", pool_conv=True, pool_channels=64), 40)
    assert [(c.in_channels, c.out_channels) for c in model.projections] == [(32, 64)] * 3
