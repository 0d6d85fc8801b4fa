"""Exception types irprune raises; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class IrpruneError(Exception):
    """Base class: a problem we can explain to the user in one line."""

    exit_code = 1


class UsageError(IrpruneError):
    """Bad arguments: a target outside (0, 1], an unknown criterion, a missing file."""

    exit_code = 2


class InvalidModelError(IrpruneError):
    """The input is not a model we can read (not ONNX, truncated, inconsistent)."""

    exit_code = 3


class CalibrationError(UsageError):
    """A calibration file whose names, dtypes or shapes do not match the model's inputs."""


class TargetError(IrpruneError):
    """The requested budget cannot be met; the message says what blocked it."""

    exit_code = 4


class VerificationError(IrpruneError):
    """The rewritten model failed the checker, shape inference or onnxruntime: nothing written."""

    exit_code = 5


class IRError(IrpruneError):
    """An IR invariant was violated (a bug in a pass, never the user's fault)."""

    exit_code = 70


class UnsupportedModelError(InvalidModelError):
    """A model the fx frontend cannot lower (a torch module, function or method it can neither
    lower nor keep opaque, or code torch.fx cannot trace); the message names it."""

    exit_code = 3


class UnsupportedOpError(IrpruneError):
    """The torch backend has no implementation of an operator (or of one of its modes)."""

    exit_code = 2


class MissingDependencyError(UsageError):
    """An optional extra (torch) is needed for what was asked and is not installed."""


class TrainingError(IrpruneError):
    """Training (C-SGD) failed in a way a setting can fix, e.g. it diverged."""

    exit_code = 2
