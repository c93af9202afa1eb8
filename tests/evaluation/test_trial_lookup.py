"""Where the utterances of a trial list are read from (docs/evaluation.md, "Where trial audio is read from"), and
that every trial list is checked before any model is loaded or any embedding computed.

A trial file's relative paths are relative to the data root, or to an explicit --audio-root / audio_dir; absolute
paths are used as they are; a registered set keeps its own folder. No `<trial file's folder>/wav/` guessing."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import sslsv.evaluation.evaluate as evaluate
import sslsv.evaluation.validation as validation
from sslsv.cli import main
from sslsv.config import ConfigError, load_config
from sslsv.data.trials import TrialsError
from sslsv.evaluation.evaluate import evaluate_run, score_trials
from sslsv.evaluation.finetune import finetune_run
from tests.evaluation.test_evaluate_backends import write_small_trials
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"
SR = 16000


class Loudness(torch.nn.Module):
    """(B, S) -> (B, 2): the RMS of the waveform and 1, so that each file's embedding is recognisable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.pow(2).mean(dim=1).sqrt(), torch.ones(len(x))], dim=1)


def _wav(path: Path, amplitude: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(SR // 2, amplitude, dtype=np.float32), SR)


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def corpus(tmp_path):
    """A data root with spk/{a,b,c}.wav (amplitudes 0.1, 0.2, 0.4) and a config pointing at it."""
    root = tmp_path / "data"
    for name, amplitude in (("a", 0.1), ("b", 0.2), ("c", 0.4)):
        _wav(root / "spk" / f"{name}.wav", amplitude)
    config = load_config(CONFIG, tiny_overrides(root, tmp_path / "run", **{"evaluation.max_trim": 0.0}))
    return root, config


def _expected(pairs: list[tuple[float, float]]) -> np.ndarray:
    """Cosine of the Loudness embeddings of two files of these amplitudes."""
    def unit(a):
        v = np.array([a, 1.0])
        return v / np.linalg.norm(v)
    return np.array([unit(a) @ unit(b) for a, b in pairs])


def test_trial_file_paths_are_relative_to_the_data_root(corpus):
    root, config = corpus
    # A wav/ folder next to the list, holding other files of the same names: the old hidden rule read those.
    _wav(root / "lists" / "wav" / "spk" / "a.wav", 0.9)
    _write(root / "lists" / "my trials.txt", ["1 spk/a.wav spk/b.wav", "0 spk/a.wav spk/c.wav"])
    trials, scores = score_trials(Loudness(), "lists/my trials.txt", config, torch.device("cpu"), progress=False)
    np.testing.assert_allclose(scores, _expected([(0.1, 0.2), (0.1, 0.4)]), atol=1e-5)


def test_audio_root_and_absolute_paths(corpus, tmp_path):
    root, config = corpus
    elsewhere = tmp_path / "elsewhere"
    _wav(elsewhere / "x" / "a.wav", 0.3)
    _wav(elsewhere / "x" / "b.wav", 0.6)
    _write(root / "lists" / "moved.txt", ["1 x/a.wav x/b.wav", "0 x/b.wav x/a.wav"])
    with pytest.raises(TrialsError, match=rf"not found under {root}:"):
        score_trials(Loudness(), "lists/moved.txt", config, torch.device("cpu"), progress=False)
    _, scores = score_trials(Loudness(), "lists/moved.txt", config, torch.device("cpu"), audio_dir=elsewhere,
                             progress=False)
    np.testing.assert_allclose(scores, _expected([(0.3, 0.6), (0.6, 0.3)]), atol=1e-5)
    # absolute paths are used as they are, whatever the data root or audio root
    _write(root / "lists" / "absolute.txt", [f"1 {elsewhere / 'x/a.wav'} spk/c.wav", f"0 spk/b.wav {elsewhere / 'x/b.wav'}"])
    _, scores = score_trials(Loudness(), "lists/absolute.txt", config, torch.device("cpu"), progress=False)
    np.testing.assert_allclose(scores, _expected([(0.3, 0.4), (0.2, 0.6)]), atol=1e-5)


def test_missing_files_are_listed_before_any_embedding(corpus, monkeypatch):
    root, config = corpus

    def never(*args, **kwargs):
        raise AssertionError("an embedding was computed for a trial list with missing files")

    monkeypatch.setattr(evaluate, "extract_embeddings", never)
    (root / "spk" / "dir.wav").mkdir()
    _write(root / "lists" / "bad.txt", ["1 spk/a.wav spk/b.wav", "0 spk/a.wav spk/gone1.wav",
                                        "1 spk/dir.wav spk/gone2.wav", "0 spk/gone3.wav spk/gone4.wav"])
    with pytest.raises(TrialsError) as info:
        score_trials(Loudness(), "lists/bad.txt", config, torch.device("cpu"), progress=False)
    message = str(info.value)
    assert message.startswith(f"{root / 'lists' / 'bad.txt'}: 5 of 7 trial utterance(s) not found under {root}: ")
    assert ("line 2: spk/gone1.wav, line 3: spk/dir.wav (a directory, not a file), line 3: spk/gone2.wav "
            "(first 3 shown)") in message
    assert "--audio-root DIR" in message and "\n" not in message


def test_evaluate_checks_every_list_before_loading_the_model(tiny_run, tiny_data, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded although a trial list is unusable")

    monkeypatch.setattr(evaluate, "load_model", never)
    good = write_small_trials(tiny_data)
    # A list next to the corpus' wav/ folder, its paths relative to wav/ (what the old hidden rule read): not
    # found under the data root, and the message says where they are.
    _write(Path(tiny_data) / "tiny" / "relative_to_wav.txt", ["1 id00000/ses0/00000.wav id00000/ses1/00000.wav",
                                                              "0 id00000/ses0/00000.wav id00001/ses0/00000.wav"])
    with pytest.raises(TrialsError) as info:
        evaluate_run(tiny_run, [good, "tiny/relative_to_wav.txt"], progress=False)
    assert (f"id00000/ses0/00000.wav is under {Path(tiny_data) / 'tiny' / 'wav'}: pass --audio-root "
            f"{Path(tiny_data) / 'tiny' / 'wav'}") in str(info.value)
    code = main(["evaluate", str(tiny_run), "--trials", good, "tiny/relative_to_wav.txt"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "relative_to_wav.txt: 3 of 3 trial utterance(s)" in err
    assert "Traceback" not in err


def test_audio_root_flag_end_to_end(tiny_run, tiny_data, capsys):
    _write(Path(tiny_data) / "lookup" / "wav_relative.txt", ["1 id00000/ses0/00000.wav id00000/ses1/00000.wav",
                                                             "0 id00000/ses0/00000.wav id00001/ses0/00000.wav"])
    code = main(["evaluate", str(tiny_run), "--trials", "lookup/wav_relative.txt",
                 "--audio-root", str(Path(tiny_data) / "tiny" / "wav")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "lookup/wav_relative.txt" in captured.out and (tiny_run / "scores" / "lookup_wav_relative.score").is_file()


def test_validation_list_and_tracked_metric_are_checked_before_the_trainer(tiny_data, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the Trainer was built although the validation is unusable")

    _write(Path(tiny_data) / "lookup" / "val_missing.txt", ["1 tiny/wav/id00000/ses0/00000.wav tiny/wav/nope.wav",
                                                            "0 tiny/wav/id00000/ses0/00000.wav tiny/wav/nope2.wav"])
    overrides = {"trainer.validate_every": 1, "trainer.validation_trials": "lookup/val_missing.txt"}
    config = load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "run", **overrides))
    monkeypatch.setattr(validation, "Trainer", never)
    with pytest.raises(TrialsError, match=r"val_missing.txt: 2 of 3 trial utterance\(s\) not found .*line 1: "
                                          r"tiny/wav/nope.wav, line 2: tiny/wav/nope2.wav"):
        validation.build_trainer(config)
    config.trainer.validation_trials = write_small_trials(tiny_data)
    config.trainer.tracked_metric = "val/err"  # set after loading, past the config's own check
    with pytest.raises(ConfigError, match="trainer.tracked_metric: 'val/err' is not a validation metric; choose "
                                          "one of val/eer, val/min_dcf_001, val/min_dcf_005"):
        validation.build_trainer(config)


def test_train_command_refuses_a_bad_validation_list_at_start(tiny_data, tmp_path, capsys):
    overrides = tiny_overrides(tiny_data, tmp_path / "run", **{"trainer.validate_every": 1,
                                                                "trainer.validation_trials": "lookup/none.txt"})
    assert main(["train", str(CONFIG), *overrides]) == 2
    err = capsys.readouterr().err
    assert "error: unknown trial set 'lookup/none.txt'" in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("**/*.pt"))  # not one step was trained


def test_finetune_checks_its_trial_lists_before_training(tiny_run, tiny_data, monkeypatch):
    import sslsv.evaluation.finetune as finetune

    monkeypatch.setattr(finetune, "_train", lambda *args: pytest.fail("trained before checking the trial lists"))
    monkeypatch.setattr(finetune, "_reference_rows", lambda *args: pytest.fail("evaluated before checking"))
    _write(Path(tiny_data) / "lookup" / "ft_missing.txt", ["1 tiny/wav/gone.wav tiny/wav/gone2.wav",
                                                           "0 tiny/wav/gone.wav tiny/wav/gone3.wav"])
    with pytest.raises(TrialsError, match="ft_missing.txt: 3 of 3"):
        finetune_run(tiny_run, [0.5], epochs=1, trials=[write_small_trials(tiny_data), "lookup/ft_missing.txt"],
                     output=Path(tiny_data) / "lookup" / "ft_out")
