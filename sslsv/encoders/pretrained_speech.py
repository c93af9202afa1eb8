"""Pretrained speech models (WavLM, HuBERT, wav2vec 2.0) as encoders, with a layer-wise back-end.

Registered encoder `pretrained_speech`: waveform (B, S) at 16 kHz -> torchaudio's model definition
(`torchaudio.models.wavlm_model` / `wav2vec2_model`, the architecture of a `torchaudio.pipelines` bundle) -> all
hidden states (B, L+1, T, D): the transformer's input (the CNN features after projection and convolutional position
embedding) and the output of each of its L layers, 20 ms per frame -> a back-end over those states -> (B, embed_dim).

Models (`encoder.model`; the torchaudio bundle; states L+1 x D):
    wavlm_base (WAVLM_BASE, 13 x 768), wavlm_base_plus (WAVLM_BASE_PLUS, 13 x 768), wavlm_large (WAVLM_LARGE,
    25 x 1024), hubert_base (HUBERT_BASE, 13 x 768), hubert_large (HUBERT_LARGE, 25 x 1024), wav2vec2_base
    (WAV2VEC2_BASE, 13 x 768), wav2vec2_large (WAV2VEC2_LARGE, 25 x 1024), wav2vec2_large_lv60k
    (WAV2VEC2_LARGE_LV60K, 25 x 1024), wav2vec2_xlsr53 (WAV2VEC2_XLSR53, 25 x 1024).

Weights (`encoder.weights`):
    bundle      the bundle's pretrained weights (`bundle.get_model()`): downloaded on first use into torch hub's cache
                (under `torch.hub.get_dir()`, by default ~/.cache/torch/hub; TORCH_HOME moves it)
                and read from there afterwards. Building the encoder again (reloading a run, resuming) reads the
                cache; the run's own weights then replace them.
    checkpoint  a local file (`encoder.checkpoint`): a state dict of the torchaudio model (keys feature_extractor.*,
                encoder.*), optionally under "state_dict" or "model"; ASR heads (aux.*) are dropped. Fairseq and
                Hugging Face checkpoints convert with torchaudio.models.wav2vec2.utils.import_fairseq_model /
                import_huggingface_model, then torch.save(model.state_dict(), path).
    none        random weights (tests, or training from scratch); `encoder.architecture` can shrink the model.

Freezing (`encoder.freeze`; frozen parts have requires_grad False, run under no_grad and stay in eval mode):
    all         the whole speech model (default): only the back-end trains (LAP, UniPool and MHFA papers' frozen
                setting).
    bottom      everything below the top `encoder.trainable_layers` transformer layers (CNN, projection, position
                embedding and the lower layers).
    cnn         the CNN feature extractor only (the usual wav2vec 2.0 / HuBERT fine-tuning).
    none        nothing: full fine-tuning.
`encoder.grad_scale` multiplies the gradient that the back-end sends into the speech model (theolepage/sslsv's
`global_feature_grad_mult`, 0.1 in its fine-tuned WavLM configs).

Back-ends (`encoder.backend`; sslsv/encoders/layerwise.py):
    mhfa            multi-head factorised attentive pooling (Peng et al., SLT 2022), all L+1 states.
    lap             LAP + ASTP (Kim et al., Interspeech 2025), all L+1 states.
    unipool         UniPool (Kim et al., 2024), states 1..L.
    weighted_astp   SUPERB weighted sum + ASTP, all L+1 states.
    weighted_ecapa  SUPERB weighted sum + ECAPA-TDNN (`encoder.ecapa`, C = 512 by default) on the D-dim frames.

Deviations from torchaudio's and the references' forward:
- Every layer runs in training too (no layer drop), so that all L+1 states exist at every step.
- The large models' waveform normalisation (zero mean, unit variance) is per utterance; torchaudio's bundle wrapper
  normalises the whole batch tensor at once.
- The final layer norm of pre-LN models (Large) is not applied to the last state (torchaudio's extract_features
  does not either).
- No padding mask: batches have equal lengths.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.encoders.base import Encoder, OutputNotSupported, pretrained_loading_skipped
from sslsv.encoders.ecapa_tdnn import ECAPATDNN, ECAPATDNNC512Config
from sslsv.encoders.layerwise import LAPBackend, LayerWeightedSum, MHFABackend, UniPoolBackend, WeightedASTPBackend
from sslsv.registry import ENCODERS

BUNDLES = {
    "wavlm_base": "WAVLM_BASE",
    "wavlm_base_plus": "WAVLM_BASE_PLUS",
    "wavlm_large": "WAVLM_LARGE",
    "hubert_base": "HUBERT_BASE",
    "hubert_large": "HUBERT_LARGE",
    "wav2vec2_base": "WAV2VEC2_BASE",
    "wav2vec2_large": "WAV2VEC2_LARGE",
    "wav2vec2_large_lv60k": "WAV2VEC2_LARGE_LV60K",
    "wav2vec2_xlsr53": "WAV2VEC2_XLSR53",
}
ModelName = Literal["wavlm_base", "wavlm_base_plus", "wavlm_large", "hubert_base", "hubert_large", "wav2vec2_base",
                    "wav2vec2_large", "wav2vec2_large_lv60k", "wav2vec2_xlsr53"]


@dataclass
class SpeechArchitecture:
    """Overrides of the bundle's architecture (null: the bundle's value), for tiny test models or a local
    checkpoint of another size; not allowed with `weights: bundle`."""

    conv_channels: int | None = None  # channels of every CNN layer (512)
    hidden_size: int | None = None  # D (768 base, 1024 large)
    layers: int | None = None  # L (12 base, 24 large)
    heads: int | None = None  # attention heads (12 / 16)
    ff_dim: int | None = None  # feed-forward width (3072 / 4096)
    pos_conv_kernel: int | None = None  # convolutional position embedding kernel (128)
    pos_conv_groups: int | None = None  # and groups (16)
    num_buckets: int | None = None  # WavLM relative position buckets (320)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            require(value is None or value >= 1, f"encoder.architecture.{f.name}", "positive or null", value)

    def params(self, params: dict, model_type: str) -> dict:
        """The torchaudio factory arguments: the bundle's `params` with these overrides."""
        out = dict(params)
        if self.conv_channels is not None:
            out["extractor_conv_layer_config"] = [(self.conv_channels, k, s)
                                                  for _, k, s in params["extractor_conv_layer_config"]]
        for key, name in (("hidden_size", "encoder_embed_dim"), ("layers", "encoder_num_layers"),
                          ("heads", "encoder_num_heads"), ("ff_dim", "encoder_ff_interm_features"),
                          ("pos_conv_kernel", "encoder_pos_conv_kernel"),
                          ("pos_conv_groups", "encoder_pos_conv_groups")):
            if getattr(self, key) is not None:
                out[name] = getattr(self, key)
        if self.num_buckets is not None:
            if model_type != "WavLM":
                raise ConfigError("encoder.architecture.num_buckets: only WavLM models have relative position buckets")
            out["encoder_num_buckets"] = self.num_buckets
        return out

    @property
    def overridden(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))


@dataclass
class LAPOptions:
    """LAP + ASTP (the LAP paper's back-end)."""

    heads: int = 16
    lap_dim: int = 512
    pool_bottleneck: int = 256
    dropout: float = 0.1


@dataclass
class UniPoolOptions:
    """UniPool (the UniPool paper's back-end)."""

    width: int = 128  # D3Block conv_dim; block width 4 * width
    blocks: int = 1
    heads: int = 4
    dropout: float = 0.1


@dataclass
class MHFAOptions:
    """MHFA (64 heads, compression 128, as theolepage/sslsv's S3PRL MHFA)."""

    heads: int = 64
    compression: int = 128


@dataclass
class PretrainedSpeechConfig:
    model: ModelName = "wavlm_base_plus"
    weights: Literal["bundle", "checkpoint", "none"] = "bundle"
    checkpoint: str = ""  # local weight file, with weights: checkpoint
    architecture: SpeechArchitecture = field(default_factory=SpeechArchitecture)
    freeze: Literal["all", "bottom", "cnn", "none"] = "all"
    trainable_layers: int = 0  # with freeze: bottom, the top N transformer layers train
    grad_scale: float = 1.0  # gradient multiplier from the back-end into the speech model
    backend: Literal["mhfa", "lap", "unipool", "weighted_astp", "weighted_ecapa"] = "mhfa"
    embed_dim: int = 192
    lap: LAPOptions = field(default_factory=LAPOptions)
    unipool: UniPoolOptions = field(default_factory=UniPoolOptions)
    mhfa: MHFAOptions = field(default_factory=MHFAOptions)
    ecapa: ECAPATDNNC512Config = field(default_factory=ECAPATDNNC512Config)  # its embed_dim: encoder.embed_dim
    pool_bottleneck: int = 128  # weighted_astp's ASTP bottleneck

    def __post_init__(self) -> None:
        if self.weights == "checkpoint" and not self.checkpoint.strip():
            raise ConfigError("encoder.checkpoint: weights 'checkpoint' needs the path of a local weight file")
        if self.weights != "checkpoint" and self.checkpoint:
            raise ConfigError(f"encoder.checkpoint: set, but encoder.weights is '{self.weights}' (set weights: "
                              f"checkpoint to load it)")
        if self.weights == "bundle" and self.architecture.overridden:
            raise ConfigError("encoder.architecture: the bundle's weights need the bundle's architecture; use "
                              "weights: none or checkpoint to change it")
        if self.freeze == "bottom":
            require(self.trainable_layers >= 1, "encoder.trainable_layers", "at least 1 with freeze: bottom",
                    self.trainable_layers)
        elif self.trainable_layers:
            raise ConfigError(f"encoder.trainable_layers: only used with freeze: bottom (freeze is '{self.freeze}')")
        require(self.grad_scale > 0, "encoder.grad_scale", "positive", self.grad_scale)
        require(self.embed_dim >= 1, "encoder.embed_dim", "positive", self.embed_dim)
        require(self.pool_bottleneck >= 1, "encoder.pool_bottleneck", "positive", self.pool_bottleneck)
        for key, options in (("lap", self.lap), ("unipool", self.unipool), ("mhfa", self.mhfa)):
            for f in dataclasses.fields(options):
                value = getattr(options, f.name)
                if f.name == "dropout":
                    require(0 <= value < 1, f"encoder.{key}.dropout", "in [0, 1)", value)
                else:
                    require(value >= 1, f"encoder.{key}.{f.name}", "positive", value)
        if (4 * self.unipool.width) % self.unipool.heads:
            raise ConfigError(f"encoder.unipool.heads: {self.unipool.heads} heads do not divide the "
                              f"{4 * self.unipool.width} channels")


# ------------------------------------------------------------------------------------------------ building


def bundle(model: str):
    """The torchaudio pipeline bundle of `model` (a key of BUNDLES)."""
    import torchaudio.pipelines

    return getattr(torchaudio.pipelines, BUNDLES[model])


def build_speech_model(cfg: PretrainedSpeechConfig) -> tuple[nn.Module, bool]:
    """The torchaudio Wav2Vec2Model of `cfg.model` (with the architecture overrides) and whether its input is
    normalised per utterance; weights as `cfg.weights` says."""
    from torchaudio.models import wav2vec2_model, wavlm_model

    source = bundle(cfg.model)
    try:
        params, model_type, normalize = dict(source._params), source._model_type, bool(source._normalize_waveform)
    except AttributeError as error:  # the bundle's fields are torchaudio internals
        raise ConfigError(f"encoder.model: this torchaudio version's {BUNDLES[cfg.model]} bundle does not describe its "
                          f"architecture ({error})") from None
    params = cfg.architecture.params(params, model_type)
    params["aux_num_out"] = None
    model = (wavlm_model if model_type == "WavLM" else wav2vec2_model)(**params)
    if pretrained_loading_skipped():  # a run's saved weights replace these right after the build
        return model, normalize
    if cfg.weights == "bundle":
        model.load_state_dict(_clean(_bundle_state(source, cfg.model)))
    elif cfg.weights == "checkpoint":
        _load_checkpoint(model, cfg.checkpoint)
    return model, normalize


def _bundle_state(source, name: str) -> dict:
    cache = torch.hub.get_dir()  # the weight files go to its checkpoints folder
    print(f"encoder.model {name}: loading torchaudio's {BUNDLES[name]} weights (downloaded once into torch hub's "
          f"cache, {cache})", file=sys.stderr)
    try:
        pretrained = source.get_model()
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise ConfigError(f"encoder.weights: could not get the {BUNDLES[name]} weights into torch hub's cache, "
                          f"{cache} ({error}); connect once, or set weights: checkpoint and encoder.checkpoint: <local file>") from None
    return pretrained.state_dict()


def _clean(state: dict) -> dict:
    """A torchaudio state dict without a wrapper's "model." prefix and without ASR heads (aux.*)."""
    if all(key.startswith("model.") for key in state):
        state = {key[len("model."):]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if not key.startswith("aux.")}


def _load_checkpoint(model: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"encoder.checkpoint: {path} is not a file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise ConfigError(f"encoder.checkpoint: cannot read {path} ({error})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"encoder.checkpoint: {path} holds no state dict")
    try:
        model.load_state_dict(_clean(state))
    except RuntimeError as error:
        first = str(error).splitlines()[1:3]
        raise ConfigError(f"encoder.checkpoint: {path} does not match the {type(model).__name__} of the configured "
                          f"model and architecture: {' '.join(line.strip() for line in first)}") from None


def build_backend(cfg: PretrainedSpeechConfig, num_layers: int, dim: int) -> nn.Module:
    if cfg.backend == "lap":
        o = cfg.lap
        return LAPBackend(num_layers, dim, o.lap_dim, o.heads, o.pool_bottleneck, o.dropout, cfg.embed_dim)
    if cfg.backend == "unipool":
        o = cfg.unipool
        return UniPoolBackend(num_layers, dim, o.width, o.blocks, o.heads, o.dropout, cfg.embed_dim)
    if cfg.backend == "mhfa":
        return MHFABackend(num_layers, dim, cfg.mhfa.heads, cfg.mhfa.compression, cfg.embed_dim)
    if cfg.backend == "weighted_astp":
        return WeightedASTPBackend(num_layers, dim, cfg.pool_bottleneck, cfg.embed_dim)
    return WeightedECAPABackend(num_layers, dim, dataclasses.replace(cfg.ecapa, embed_dim=cfg.embed_dim))


class WeightedECAPABackend(nn.Module):
    """SUPERB weighted sum of the states -> ECAPA-TDNN on the (B, D, T) frames. (B, L, T, D) -> (B, embed_dim)."""

    def __init__(self, num_layers: int, dim: int, ecapa: ECAPATDNNC512Config):
        super().__init__()
        self.mix = LayerWeightedSum(num_layers)
        self.ecapa = ECAPATDNN(ecapa, dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.ecapa(self.mix(states).transpose(1, 2))


def _scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; its gradient times `scale` in the backward pass (plain ops, exportable)."""
    return x * scale + x.detach() * (1 - scale)


# ------------------------------------------------------------------------------------------------ encoder


@ENCODERS.register("pretrained_speech", config=PretrainedSpeechConfig,
                   example={"encoder": {"weights": "none", "freeze": "none",
                                        "architecture": {"conv_channels": 16, "hidden_size": 32, "layers": 2,
                                                         "heads": 4, "ff_dim": 64, "pos_conv_kernel": 16,
                                                         "pos_conv_groups": 4, "num_buckets": 32},
                                        "mhfa": {"heads": 4, "compression": 8}, "embed_dim": 12}})
class PretrainedSpeech(Encoder):
    """WavLM / HuBERT / wav2vec 2.0 (torchaudio) + layer-wise back-end (MHFA, LAP, UniPool, weighted ASTP/ECAPA)."""

    input_kind = "waveform"
    has_layers = True
    has_frames = True  # the class can; each instance says whether its back-end has a frame sequence (below)

    def __init__(self, cfg: PretrainedSpeechConfig, in_features: int = 0):
        super().__init__()
        self.cfg = cfg
        self.speech, self.normalize_waveform = build_speech_model(cfg)
        transformer = self.speech.encoder.transformer
        layers = len(transformer.layers)
        self.num_layers, self.layer_dim = layers + 1, transformer.layer_norm.normalized_shape[0]
        if cfg.trainable_layers > layers:
            raise ConfigError(f"encoder.trainable_layers: {cfg.trainable_layers}, more than the model's {layers} "
                              f"transformer layers")
        # the first transformer layer that trains: 0 (freeze none/cnn), layers (all), layers - N (bottom)
        self.first_trained = {"all": layers, "bottom": max(layers - cfg.trainable_layers, 0)}.get(cfg.freeze, 0)
        self.skip_first_state = cfg.backend == "unipool"  # UniPool reads layers 1..L
        self.backend = build_backend(cfg, layers if self.skip_first_state else layers + 1, self.layer_dim)
        self.embed_dim = cfg.embed_dim
        frame_dims = {"lap": cfg.lap.lap_dim, "unipool": 4 * cfg.unipool.width, "weighted_astp": self.layer_dim}
        self.has_frames = cfg.backend in frame_dims  # the sequence the back-end's ASTP reads
        if self.has_frames:
            self.frame_dim = frame_dims[cfg.backend]
        self._freeze()

    # -------------------------------------------------------------------------------------------- freezing

    def frozen_modules(self) -> list[nn.Module]:
        """The parts of the speech model that `freeze` keeps fixed."""
        if self.cfg.freeze == "none":
            return []
        if self.cfg.freeze == "cnn":
            return [self.speech.feature_extractor]
        transformer = self.speech.encoder.transformer
        return [self.speech.feature_extractor, self.speech.encoder.feature_projection, transformer.pos_conv_embed,
                transformer.layer_norm, *transformer.layers[: self.first_trained]]

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)
        transformer = self.speech.encoder.transformer
        if not transformer.layer_norm_first:  # pre-LN models (Large): the final norm, unused by the states
            transformer.layer_norm.requires_grad_(False)
        if self.cfg.freeze == "all":
            self.speech.requires_grad_(False)  # also mask_emb and any parameter outside the listed parts
        elif "mask_emb" in dict(self.speech.named_parameters()):
            self.speech.get_parameter("mask_emb").requires_grad_(False)  # pretraining only

    def train(self, mode: bool = True) -> PretrainedSpeech:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # frozen: no dropout
        return self

    # -------------------------------------------------------------------------------------------- forward

    def forward_layers(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> states (B, L+1, T, D): the transformer's input and each layer's output."""
        if self.normalize_waveform:
            wave = F.layer_norm(wave, wave.shape[-1:])
        frozen_cnn = self.cfg.freeze != "none"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_cnn):
            features, _ = self.speech.feature_extractor(wave, None)
        frozen_bottom = self.cfg.freeze in ("all", "bottom")
        transformer = self.speech.encoder.transformer
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_bottom):
            x = transformer._preprocess(self.speech.encoder.feature_projection(features))
        states, position_bias = [x], None
        for index, layer in enumerate(transformer.layers):
            with torch.set_grad_enabled(torch.is_grad_enabled() and index >= self.first_trained):
                x, position_bias = layer(x, None, position_bias=position_bias)
            states.append(x)
        states = torch.stack(states, dim=1)
        if self.cfg.grad_scale != 1 and states.requires_grad:
            states = _scale_gradient(states, self.cfg.grad_scale)
        return states

    def _read(self, states: torch.Tensor) -> torch.Tensor:
        return states[:, 1:] if self.skip_first_state else states

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.backend(self._read(self.forward_layers(wave)))

    def forward_with_layers(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.forward_layers(wave)
        return self.backend(self._read(states)), states

    def forward_frames(self, wave: torch.Tensor) -> torch.Tensor:
        if not self.has_frames:
            raise OutputNotSupported(f"{type(self).__name__} does not expose frame-level outputs with backend "
                                     f"'{self.cfg.backend}' (forward_frames)")
        return self.backend.forward_frames(self._read(self.forward_layers(wave)))

    def frame_pooling(self) -> nn.Module | None:
        return getattr(self.backend, "pooling", None) if self.has_frames else None
