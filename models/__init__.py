"""Reference architectures in plain torch (``models.reference``) and their ONNX export
(``models.export``). Importing this package does not import torch."""
