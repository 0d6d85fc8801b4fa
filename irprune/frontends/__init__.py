"""Frontends: each turns a model from somewhere into an IR graph.

``onnx``: files and ``onnx.ModelProto``. ``fx``: a ``torch.nn.Module`` traced with torch.fx and
lowered through one table (``fx_ops``, ``fx_shapes``; layers without a lowering kept opaque by
``fx_opaque``), or, where torch.fx cannot trace it, exported with torch.export and lowered through
the ATen table (``export``, ``export_ops``); torch is imported only when it is used.
"""
