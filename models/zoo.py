"""The model zoo: ~40 small architectures covering the structures real models are made of.

``ZOO`` maps a name to a :class:`~models.zoo_common.ZooSpec`. :func:`build_zoo` returns a
seeded, randomised, eval-mode instance; :func:`sample_inputs` seeded inputs for it. The ONNX
exports (both BN styles, cached) live in :mod:`models.zoo_export`; the pruning benchmark in
``benchmarks/zoo.py``. Builders of the ``transformers`` models import it lazily.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models import zoo_cnn as cnn
from models import zoo_dense as dense
from models import zoo_resnets as res
from models import zoo_transformers as hf
from models.zoo_common import (
    InputSpec,
    ZooSpec,
    calibration_sample,
    frozen_kwargs,
    image,
    make_input,
    randomize,
)

__all__ = ["ZOO", "InputSpec", "ZooSpec", "build_zoo", "sample_inputs"]


def _torch(builder, inputs, *structures, bn=True, outputs=("output",), **kwargs) -> ZooSpec:  # type: ignore[no-untyped-def]
    if isinstance(inputs, InputSpec):
        inputs = (inputs,)
    return ZooSpec(
        builder, tuple(inputs), tuple(outputs), frozen_kwargs(**kwargs), bn, tuple(structures)
    )


def _hf(builder, inputs, *structures, bn=False, outputs=("output",)) -> ZooSpec:  # type: ignore[no-untyped-def]
    return ZooSpec(
        builder, tuple(inputs), tuple(outputs), has_bn=bn, structures=tuple(structures),
        family="transformers",
    )  # fmt: skip


_IDS = InputSpec("input_ids", (1, hf.SEQ), "int64", low=2, high=hf.VOCAB)
_MASK = InputSpec("attention_mask", (1, hf.SEQ), "int64", ones=True)
_PIXELS = InputSpec("pixel_values", (1, 3, hf.IMAGE, hf.IMAGE))

ZOO: dict[str, ZooSpec] = {
    # ---- ResNet family
    "resnet18": _torch(res.resnet18, image(32), "basic block", "residual add",
                       "projection shortcut"),
    "resnet34": _torch(res.resnet34, image(32), "basic block", "deeper residual stages"),
    "resnet50": _torch(res.resnet50, image(32), "bottleneck 1x1-3x3-1x1", "4x expansion",
                       "residual add"),
    "wide_resnet": _torch(res.wide_resnet, image(32), "pre-activation BN-ReLU-conv",
                          "BN not after a conv (unfoldable)", "dropout", "shortcut from "
                          "pre-activated input"),
    "resnext": _torch(res.resnext, image(32), "grouped 3x3 conv (cardinality 8)",
                      "bottleneck", "residual add"),
    "regnet_y": _torch(res.regnet_y, image(32), "grouped conv (group width 8)",
                       "conv SE (ReLU, sigmoid, Mul)", "residual add"),
    "se_resnet": _torch(res.se_resnet, image(32), "Linear SE with runtime view(b, c)",
                        "Shape/Gather/Reshape", "sigmoid gate Mul before residual add"),
    "densenet": _torch(res.densenet, image(64), "dense concat", "pre-activation BN after "
                       "concat", "transition avgpool"),
    # ---- mobile nets
    "shufflenet_v2": _torch(cnn.shufflenet_v2, image(64), "chunk (Split)", "channel shuffle "
                            "(Reshape-Transpose-Reshape, runtime shape)", "concat",
                            "depthwise conv"),
    "mobilenet_v1": _torch(cnn.mobilenet_v1, image(64), "depthwise separable conv",
                           "no residual"),
    "mobilenet_v2": _torch(cnn.mobilenet_v2, image(64), "inverted residual", "ReLU6 (Clip)",
                           "depthwise conv", "linear bottleneck add"),
    "mobilenet_v3_small": _torch(cnn.mobilenet_v3_small, image(64), "hardswish", "SE with "
                                 "hardsigmoid", "5x5 depthwise", "Linear head with hardswish"),
    "efficientnet_b0": _torch(cnn.efficientnet_b0, image(64), "MBConv", "SiLU", "SE "
                              "(squeeze from block input)", "depthwise 3x3/5x5"),
    "ghostnet": _torch(cnn.ghostnet, image(64), "ghost module concat of primary + cheap "
                       "depthwise", "channel Slice (one odd width cuts)", "SE hardsigmoid",
                       "depthwise shortcut"),
    # ---- classics
    "squeezenet": _torch(cnn.squeezenet, image(64), "fire module concat", "ceil-mode maxpool",
                         "conv classifier + global pool", "no BN", bn=False),
    "inception": _torch(cnn.inception, image(64), "4-branch concat (GoogLeNet)",
                        "maxpool branch"),
    "vgg11_bn": _torch(cnn.vgg11_bn, image(64), "plain conv-BN-ReLU stack",
                       "spatial Flatten -> Gemm"),
    "alexnet": _torch(cnn.alexnet, image(112), "11x11/4 conv", "no BN", "spatial Flatten -> "
                      "3 Gemm", bn=False),
    # ---- dense prediction
    "unet": _torch(dense.UNet, image(64), "ConvTranspose 2x2/2 upsampling",
                   "skip concat", "per-pixel output"),
    "fpn": _torch(dense.FPN, image(64), "nearest Resize to a runtime size", "lateral add",
                  "3 outputs", outputs=("p2", "p3", "p4")),
    "autoencoder": _torch(dense.autoencoder, image(32), "ConvTranspose decoder "
                          "(output_padding)", "ConvTranspose -> BN (not folded)", "sigmoid"),
    "deeplab_aspp": _torch(dense.DeepLab, image(64), "dilated conv", "ASPP concat",
                           "image-pool branch + bilinear Resize", "upsample to input size"),
    # ---- 1-D, other norms, MLP-style
    "tcn_1d": _torch(dense.TCN, InputSpec("input", (1, 1, 512)), "Conv1d", "BatchNorm1d",
                     "dilated causal conv + time-axis Slice (chomp)", "residual add",
                     "mean over time"),
    "convnext": _torch(dense.ConvNeXt, image(32), "channels-first LayerNorm by hand "
                       "(ReduceMean over C)", "NHWC LayerNorm + Linear via Transpose",
                       "layer scale Mul", "7x7 depthwise", bn=False),
    "groupnorm_resnet": _torch(dense.groupnorm_resnet, image(32), "GroupNorm", "residual add",
                               bn=False),
    "style_transfer": _torch(dense.style_transfer, image(64), "InstanceNorm (affine)",
                             "reflection Pad", "nearest Upsample + conv", "ConvTranspose",
                             "tanh image output", bn=False),
    "mlp_mixer": _torch(dense.MLPMixer, image(32), "token mixing via Transpose + MatMul",
                        "LayerNorm", "patch-embedding conv + Flatten", bn=False),
    "mlp": _torch(dense.mlp, InputSpec("input", (1, 1, 28, 28)), "Flatten", "Gemm",
                  "BatchNorm1d after Gemm (not folded)"),
    # ---- transformers (tiny configs, random weights)
    "hf_bert": _hf(hf.bert, (_IDS,), "token/position/type embeddings (Gather)",
                   "multi-head attention (Reshape heads x head_dim)", "LayerNorm", "GELU MLP",
                   "pooler Gemm on CLS", outputs=("last_hidden_state", "pooler_output")),
    "hf_gpt2": _hf(hf.gpt2, (_IDS, _MASK), "explicit attention mask input", "Conv1D "
                   "(addmm Gemm)", "fused qkv Split", "causal mask", "pre-LN",
                   outputs=("last_hidden_state",)),
    "hf_distilbert": _hf(hf.distilbert, (_IDS,), "SDPA attention", "LayerNorm", "heads",
                         outputs=("last_hidden_state",)),
    "hf_roberta": _hf(hf.roberta, (_IDS,), "CumSum position ids", "classification head on "
                      "token 0 (Gather on sequence axis)", outputs=("logits",)),
    "hf_vit": _hf(hf.vit, (_PIXELS,), "conv patch embedding + Flatten/Transpose", "CLS "
                  "concat", "heads", outputs=("last_hidden_state",)),
    "hf_deit": _hf(hf.deit, (_PIXELS,), "CLS + distillation tokens", "classifier on token 0",
                   outputs=("logits",)),
    "hf_swin": _hf(hf.swin, (_PIXELS,), "window partition/reverse (Reshape/Transpose)",
                   "shifted windows", "relative position bias", "patch merging (strided "
                   "slices + concat)", outputs=("logits",)),
    "hf_convnext": _hf(hf.convnext, (_PIXELS,), "channels-first LayerNorm", "NHWC Linear "
                       "blocks", "layer scale", "2 outputs",
                       outputs=("last_hidden_state", "pooler_output")),
    "hf_resnet": _hf(hf.resnet, (_PIXELS,), "transformers ResNet bottleneck", "BN",
                     "maxpool stem", bn=True, outputs=("logits",)),
    "hf_segformer": _hf(hf.segformer, (_PIXELS,), "overlapping patch embeds", "attention "
                        "with strided reduction conv", "Mix-FFN depthwise conv in the MLP",
                        "bilinear Resize decoder + concat + fuse conv + BN", bn=True,
                        outputs=("logits",)),
}  # fmt: skip


def sample_inputs(name: str, batch: int = 2, seed: int = 0) -> tuple[Tensor, ...]:
    """Seeded inputs for zoo model ``name``, one tensor per graph input, in spec order."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(make_input(spec, batch, gen) for spec in ZOO[name].inputs)


def build_zoo(name: str, seed: int = 0) -> nn.Module:
    """Build zoo model ``name`` from ``seed``: eval mode, biases, norms and BN randomised."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
    spec = ZOO[name]
    torch.manual_seed(seed)
    model = spec.builder(**spec.kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    randomize(model, calibration_sample(spec.inputs, gen), gen)
    return model.eval()
