"""trainer.grad_clip_mode: per_parameter clips each parameter tensor's gradient on its own (DINO's and the review
authors' clip_gradients); global is torch's clip_grad_norm_ over all gradients, unchanged. Both keep the trainer's
gradient-finiteness flag."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sslsv.config import TrainerConfig, config_warnings, load_config
from sslsv.training.trainer import Trainer, clip_gradients_per_parameter


def _model_with_gradients(seed: int = 0) -> nn.Module:
    """Tensors whose gradient norms lie far below, near and far above 3."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    scales = [10.0, 0.01, 2.0, 1e-4, 0.5, 50.0]
    for p, scale in zip(model.parameters(), scales):
        p.grad = scale * torch.randn_like(p)
    return model


def _reference_loop(model: nn.Module, clip: float) -> None:
    """The authors' loop (theolepage/sslsv DINO.on_after_backward; DINO utils.clip_gradients), verbatim in spirit."""
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


@pytest.mark.parametrize("clip", [3.0, 0.05])
def test_per_parameter_clipping_matches_the_plain_loop(clip):
    model, expected = _model_with_gradients(), _model_with_gradients()
    norms_before = [p.grad.norm().item() for p in model.parameters()]
    largest = clip_gradients_per_parameter(model.parameters(), clip)
    _reference_loop(expected, clip)
    assert largest.item() == pytest.approx(max(norms_before), rel=1e-6)
    for p, q, before in zip(model.parameters(), expected.parameters(), norms_before):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
        after = p.grad.norm().item()
        if before > clip:  # each tensor on its own is brought to the threshold ...
            assert after == pytest.approx(clip, rel=1e-5)
        else:  # ... and one under it is left exactly as it was
            assert after == before
    assert sum(before > clip for before in norms_before) >= 2  # the case is not trivial


def test_per_parameter_differs_from_global():
    """Global clipping shrinks every gradient by one shared factor (total norm exactly 3); per-parameter leaves the
    tensors under 3 exactly as they were."""
    original, per_parameter, whole = _model_with_gradients(), _model_with_gradients(), _model_with_gradients()
    clip_gradients_per_parameter(per_parameter.parameters(), 3.0)
    torch.nn.utils.clip_grad_norm_(whole.parameters(), 3.0)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in whole.parameters()]))
    assert total.item() == pytest.approx(3.0, rel=1e-5)
    small = [(o, p, w) for o, p, w in zip(original.parameters(), per_parameter.parameters(), whole.parameters())
             if o.grad.norm() < 3.0]
    assert small
    for o, p, w in small:
        assert torch.equal(p.grad, o.grad) and w.grad.norm() < o.grad.norm()


def _trainer_stub(model: nn.Module, **trainer_options) -> SimpleNamespace:
    """What Trainer._clip_and_check_gradients reads: the trainer config, a (disabled) scaler, the optimiser, the
    method and the device."""
    return SimpleNamespace(config=SimpleNamespace(trainer=TrainerConfig(**trainer_options)),
                           scaler=torch.amp.GradScaler("cpu", enabled=False), optimizer=None, method=model,
                           device=torch.device("cpu"))


@pytest.mark.parametrize("mode", ["global", "per_parameter"])
def test_trainer_clips_in_the_configured_mode_and_flags_non_finite_gradients(mode):
    model, expected = _model_with_gradients(), _model_with_gradients()
    flag = Trainer._clip_and_check_gradients(_trainer_stub(model, grad_clip=3.0, grad_clip_mode=mode))
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(expected.parameters(), 3.0)  # unchanged: torch's global clipping
    else:
        _reference_loop(expected, 3.0)
    assert flag.item() == 0 and flag.dim() == 0
    for p, q in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    for bad in (float("nan"), float("inf")):
        broken = _model_with_gradients()
        next(iter(broken.parameters())).grad[0, 0] = bad
        assert Trainer._clip_and_check_gradients(_trainer_stub(broken, grad_clip=3.0, grad_clip_mode=mode)).item() == 1


def test_without_clipping_nothing_changes_and_the_check_stays():
    model = _model_with_gradients()
    grads = [p.grad.clone() for p in model.parameters()]
    assert Trainer._clip_and_check_gradients(_trainer_stub(model, grad_clip_mode="per_parameter")).item() == 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert clip_gradients_per_parameter(nn.Linear(2, 2).parameters(), 3.0).item() == 0  # no gradients


def test_dino_configs_clip_per_parameter_at_3_and_others_stay_global():
    for path in ("configs/dino/fast_resnet34.yml", "configs/dino/ecapa.yml", "configs/dino/fast_resnet34_demo.yml"):
        trainer = load_config(path).trainer
        assert (trainer.grad_clip, trainer.grad_clip_mode) == (3.0, "per_parameter"), path
    assert load_config("configs/supervised/ssrfnet.yml").trainer.grad_clip_mode == "global"
    assert TrainerConfig().grad_clip_mode == "global"


def test_per_parameter_without_a_threshold_is_reported():
    config = load_config("configs/simclr/fast_resnet34_demo.yml", ["trainer.grad_clip_mode=per_parameter"])
    assert any(w.startswith("trainer.grad_clip_mode:") for w in config_warnings(config))
    config = copy.deepcopy(config)
    config.trainer.grad_clip = 3.0
    assert not any(w.startswith("trainer.grad_clip_mode:") for w in config_warnings(config))
