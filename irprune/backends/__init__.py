"""Backends: run the IR somewhere other than onnxruntime.

``irprune.backends.torch`` turns an IR graph into a trainable ``torch.nn.Module`` (torch extra).
``tempnorm`` (IR only) and ``torch_norm`` (torch side) train BN-free graphs with temporary
BatchNormalization nodes, folded back into the weights afterwards.
Nothing here is imported by ``import irprune``: import the backend module explicitly.
"""

from __future__ import annotations

from irprune.errors import MissingDependencyError


def missing_torch(what: str, exc: ImportError) -> MissingDependencyError:
    """The error for ``what`` needing torch when importing it failed with ``exc``."""
    return MissingDependencyError(
        f"{what} needs torch, which is not installed ({exc}); install the extra: "
        "pip install 'irprune[torch]'"
    )
