import time
from pathlib import Path

import numpy as np
import pytest

from sslsv.data.trials import (Trials, TrialSet, TrialsError, check_trial_labels, locate_trial_audio, read_trials,
                               resolve_trials, write_trials)
from sslsv.registry import TRIAL_SETS, describe


def test_voxceleb_format(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 id1/a/1.wav id1/b/2.wav\n0 id1/a/1.wav id2/c/3.wav\n\n1 id2/c/3.wav id2/d/4.wav\n")
    trials = read_trials(path)
    assert len(trials) == 3
    assert trials.enroll == ["id1/a/1.wav", "id1/a/1.wav", "id2/c/3.wav"]
    assert trials.test == ["id1/b/2.wav", "id2/c/3.wav", "id2/d/4.wav"]
    assert trials.labels.dtype == np.int8 and trials.labels.tolist() == [1, 0, 1]
    assert trials.utterances() == ["id1/a/1.wav", "id1/b/2.wav", "id2/c/3.wav", "id2/d/4.wav"]


def test_kaldi_format(tmp_path):
    path = tmp_path / "trials"
    path.write_text("a b target\na c nontarget\nc  d\ttarget\n")
    trials = read_trials(path)
    assert trials.enroll == ["a", "a", "c"] and trials.test == ["b", "c", "d"]
    assert trials.labels.tolist() == [1, 0, 1]


def test_write_round_trip(tmp_path):
    trials = Trials(["a", "b"], ["c", "d"], np.array([0, 1], dtype=np.int8), "x")
    write_trials(trials, tmp_path / "sub" / "t.txt")
    assert (tmp_path / "sub" / "t.txt").read_text() == "0 a c\n1 b d\n"
    again = read_trials(tmp_path / "sub" / "t.txt")
    assert again.enroll == trials.enroll and again.labels.tolist() == [0, 1]


@pytest.mark.parametrize("bad_line", ["1 a.wav", "1 a.wav b.wav c.wav", "2 a.wav b.wav", "a.wav b.wav maybe"])
def test_malformed_line_names_file_line_and_content(tmp_path, bad_line):
    path = tmp_path / "t.txt"
    path.write_text("1 a.wav b.wav\n0 a.wav c.wav\n\n" + bad_line + "\n1 x.wav y.wav\n")
    with pytest.raises(TrialsError) as info:
        read_trials(path)
    message = str(info.value)
    assert str(path) in message and "line 4" in message and repr(bad_line) in message


def test_mixed_formats_and_empty(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\na c nontarget\n")
    with pytest.raises(TrialsError, match="line 2: mixed formats"):
        read_trials(path)
    path.write_text("\n\n")
    with pytest.raises(TrialsError, match="empty"):
        read_trials(path)
    with pytest.raises(TrialsError, match="not found"):
        read_trials(tmp_path / "nope.txt")


def test_registered_trial_sets():
    for name, path in [("vox1_O", "voxceleb1/veri_test2.txt"), ("vox1_E", "voxceleb1/list_test_all2.txt"),
                       ("vox1_H", "voxceleb1/list_test_hard2.txt"), ("demo", "demo/trials.txt"),
                       ("demo_val", "demo/val_trials.txt")]:
        trial_set = TRIAL_SETS.get(name).obj
        assert isinstance(trial_set, TrialSet) and trial_set.path == path
    assert TRIAL_SETS.get("demo").obj.audio_dir == "demo/wav"
    assert TRIAL_SETS.get("vox1_O").obj.audio_dir == "voxceleb1/wav"
    assert "VoxCeleb1-O" in describe()


def test_resolve_by_name_and_by_path(tmp_path):
    (tmp_path / "demo" / "wav").mkdir(parents=True)
    (tmp_path / "demo" / "trials.txt").write_text("1 a.wav b.wav\n")
    trials, audio_dir = resolve_trials("demo", tmp_path)  # a registered set: its own audio folder
    assert len(trials) == 1 and audio_dir == tmp_path / "demo" / "wav"
    # A trial file: relative to the data root, even when a wav/ folder sits next to it (no hidden rule)
    trials, audio_dir = resolve_trials("demo/trials.txt", tmp_path)
    assert audio_dir == tmp_path
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "list.txt").write_text("a b target\n")
    trials, audio_dir = resolve_trials(str(tmp_path / "other" / "list.txt"), "/nonexistent")
    assert audio_dir == Path("/nonexistent") and trials.labels.tolist() == [1]
    # An explicit audio root wins, for a file and for a registered set
    assert resolve_trials("demo/trials.txt", tmp_path, audio_root="/audio")[1] == Path("/audio")
    assert resolve_trials("demo", tmp_path, audio_root=tmp_path / "x")[1] == tmp_path / "x"
    with pytest.raises(TrialsError, match=r"demo_val.*val_trials.txt not found"):
        resolve_trials("demo_val", tmp_path)
    with pytest.raises(TrialsError) as info:
        resolve_trials("vox1-o", tmp_path)
    assert "Did you mean 'vox1_O'" in str(info.value) and "demo_val" in str(info.value)


def test_binary_file_and_directory_are_named(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"1 a.wav b.wav\n\xff\xfe\x00garbage\n")
    with pytest.raises(TrialsError, match=r"t.txt: line 2: not UTF-8"):
        read_trials(path)
    with pytest.raises(TrialsError, match="is a directory"):
        read_trials(tmp_path)


def test_check_trial_labels_names_the_file_and_counts():
    check_trial_labels(Trials(["a", "a"], ["b", "c"], np.array([1, 0], dtype=np.int8), "t.txt"))
    with pytest.raises(TrialsError, match="needs both target and non-target trials: t.txt has 2 target, 0 non-target"):
        check_trial_labels(Trials(["a", "a"], ["b", "c"], np.array([1, 1], dtype=np.int8), "t.txt"))


def test_locate_trial_audio(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "spk" / "d.wav").mkdir(parents=True)  # a directory where a file is expected
    for name in ("spk/a.wav", "spk/b.wav"):
        (tmp_path / name).write_bytes(b"x")
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(b"x")
    path = tmp_path / "lists" / "t.txt"
    path.write_text(f"1 spk/a.wav spk/b.wav\n0 spk/a.wav {outside}\n")
    trials = read_trials(path)
    assert locate_trial_audio(trials, tmp_path) == [str(outside), str(tmp_path / "spk/a.wav"),
                                                    str(tmp_path / "spk/b.wav")]  # absolute paths as they are
    path.write_text("1 spk/a.wav spk/b.wav\n\n0 spk/a.wav spk/c.wav\n1 spk/d.wav spk/e.wav\n0 spk/f.wav spk/g.wav\n")
    with pytest.raises(TrialsError) as info:
        locate_trial_audio(read_trials(path), tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 of 7 trial utterance(s) not found under {tmp_path}: ")
    assert "line 3: spk/c.wav, line 4: spk/d.wav (a directory, not a file), line 4: spk/e.wav (first 3 shown)" \
        in message
    assert "--audio-root" in message and "\n" not in message


def test_locate_trial_audio_suggests_the_folder_where_the_files_are(tmp_path):
    (tmp_path / "corpus" / "wav" / "s1").mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        (tmp_path / "corpus" / "wav" / "s1" / name).write_bytes(b"x")
    (tmp_path / "corpus" / "trials.txt").write_text("1 s1/a.wav s1/b.wav\n")
    trials, folder = resolve_trials("corpus/trials.txt", tmp_path)
    with pytest.raises(TrialsError, match=rf"s1/a.wav is under {tmp_path / 'corpus' / 'wav'}: pass --audio-root"):
        locate_trial_audio(trials, folder)
    trials, folder = resolve_trials("corpus/trials.txt", tmp_path, audio_root=tmp_path / "corpus" / "wav")
    assert len(locate_trial_audio(trials, folder)) == 2


def test_locate_trial_audio_without_a_file_lists_in_trial_order(tmp_path):
    trials = Trials(["z.wav", "a.wav"], ["y.wav", "b.wav"], np.array([1, 0], dtype=np.int8), "calibration(x)")
    with pytest.raises(TrialsError, match=r"calibration\(x\): 4 of 4 .*: z.wav, y.wav, a.wav \(first 3 shown\)"):
        locate_trial_audio(trials, tmp_path)


@pytest.mark.skip(reason="benchmark, run by hand: 580k-line parse time")
def test_benchmark_large_list(tmp_path):  # pragma: no cover
    rng = np.random.default_rng(0)
    lines = [f"{rng.integers(2)} id{rng.integers(10000, 11000)}/x{i % 999}/0001.wav id10{i % 777}/y/0002.wav"
             for i in range(580_000)]
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    assert len(read_trials(path)) == 580_000
    print(f"580k trials parsed in {time.perf_counter() - start:.2f} s")
