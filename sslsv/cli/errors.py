"""The one error-to-exit-status wrapper of the `sslsv` command line.

A user error (bad config, unusable data, missing run, ...) prints `error: <message>` on stderr, no traceback, and
exits with status 2 (the message is one line unless it lists several problems); Ctrl-C exits with 130; a training
preempted by SIGTERM or SIGUSR1 (its checkpoint saved, its message printed by the trainer) exits with 75
(PREEMPTED_EXIT_CODE) so that a job script can requeue it; a closed output pipe (`sslsv -h | head`) exits quietly.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

INTERRUPTED_MESSAGE = "interrupted; rerun the same command to resume from the last checkpoint"
# EX_TEMPFAIL (sysexits.h): "try again later". Distinct from errors (1, 2), Ctrl-C (130) and kills (137, 143).
PREEMPTED_EXIT_CODE = 75


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the user asked for something impossible", not "sslsv has a bug".

    Imported lazily so that `sslsv --help` does not pay for torch.
    """
    from sslsv.audio.augment import AugmentationError
    from sslsv.audio.io import AudioError
    from sslsv.config import ConfigError
    from sslsv.data.demo.espeak import EspeakError
    from sslsv.data.manifest import ManifestError
    from sslsv.data.prepare import PrepareError
    from sslsv.data.trials import TrialsError
    from sslsv.distributed import DeviceError
    from sslsv.evaluation.errors import EvaluationError
    from sslsv.export import ExportError
    from sslsv.registry import RegistryError
    from sslsv.runs import RunError
    from sslsv.training.trainer import TrainingError

    return (ConfigError, RegistryError, ManifestError, TrialsError, AudioError, AugmentationError, RunError,
            TrainingError, DeviceError, FileNotFoundError, FileExistsError, PrepareError, ExportError, EspeakError, EvaluationError)


def preemption() -> type[BaseException]:
    """The exception of a preempted training (imported lazily, like user_errors)."""
    from sslsv.training.trainer import Preempted

    return Preempted


def _message(error: BaseException) -> str:
    # KeyError subclasses (RegistryError) repr their argument; show the plain text instead
    text = str(error.args[0]) if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    return text.strip() or type(error).__name__


def quiet_broken_pipe() -> None:
    """After a BrokenPipeError on stdout: silence the interpreter's final flush."""
    # the reader went away: point stdout at /dev/null so that the interpreter's final flush does not complain
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run_command(function: Callable[[], object]) -> int:
    """Call function() and turn its outcome into an exit status: 0, 2 (user error), 75 (preempted), 130 (Ctrl-C)."""
    try:
        function()
    except KeyboardInterrupt:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return 130
    except BrokenPipeError:
        quiet_broken_pipe()
        return 0
    except preemption():
        return PREEMPTED_EXIT_CODE
    except user_errors() as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        return 2
    return 0
