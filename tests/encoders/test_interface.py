"""The encoder interface (sslsv/encoders/base.py), checked on every registered family at its example size:
representation, frames (`has_frames`, `forward_frames`, `frame_dim`, `frame_pooling`) and layers (`has_layers`,
`forward_layers`, `num_layers`, `layer_dim`, `forward_with_layers`)."""
import pytest
import torch

from sslsv.config import FeaturesConfig, Spec, from_dict
from sslsv.encoders.base import Encoder, OutputNotSupported, SpeakerModel, build_speaker_model
from sslsv.registry import ENCODERS
from tests.encoders.encoder_examples import built_class, families

FAMILIES = [entry.name for entry in families()]


def example_model(name: str) -> SpeakerModel:
    entry = ENCODERS.get(name)
    options = from_dict(entry.config, entry.example["encoder"], "encoder.")
    features = FeaturesConfig(**entry.example.get("features", {}))
    torch.manual_seed(0)
    return build_speaker_model(Spec(name, options), features).eval()


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", FAMILIES)
def test_frames_follow_the_interface(name, wave):
    model = example_model(name)
    encoder = model.encoder
    with torch.no_grad():
        embedding = model(wave)
        assert embedding.shape == (2, encoder.embed_dim)
        if not encoder.has_frames:
            with pytest.raises(OutputNotSupported, match=type(encoder).__name__):
                model.forward_frames(wave)
            return
        frames = model.forward_frames(wave)
        assert frames.dim() == 3 and frames.shape[:2] == (2, encoder.frame_dim) and frames.shape[2] > 0
        pooling = encoder.frame_pooling()
        if pooling is not None:
            assert pooling(frames).shape == (2, pooling.out_dim)


@pytest.mark.parametrize("name", FAMILIES)
def test_layers_follow_the_interface(name, wave):
    model = example_model(name)
    encoder = model.encoder
    with torch.no_grad():
        if not encoder.has_layers:
            for call in (model.forward_layers, model.forward_with_layers):
                with pytest.raises(OutputNotSupported, match=f"{type(encoder).__name__} does not expose layer-wise"):
                    call(wave)
            return
        layers = model.forward_layers(wave)
        assert layers.dim() == 4 and layers.shape[0] == 2 and layers.shape[2] > 0
        assert (layers.shape[1], layers.shape[3]) == (encoder.num_layers, encoder.layer_dim)
        embedding, same_layers = model.forward_with_layers(wave)
        torch.testing.assert_close(embedding, model(wave))
        torch.testing.assert_close(same_layers, layers)


@pytest.mark.parametrize("entry", ENCODERS.entries(), ids=lambda e: e.name)
def test_capability_flags_match_the_implemented_methods(entry):
    cls = built_class(entry)
    assert issubclass(cls, Encoder)
    assert cls.has_layers == (cls.forward_layers is not Encoder.forward_layers), cls
    assert cls.has_frames == (cls.forward_frames is not Encoder.forward_frames), cls


def test_speaker_model_forwards_the_flags():
    model = example_model("fast_resnet34")
    assert model.has_frames and not model.has_layers
    assert isinstance(OutputNotSupported("x"), NotImplementedError)
