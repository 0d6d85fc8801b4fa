"""Zoo: ``transformers`` models instantiated from tiny configs with random weights (offline).

Each builder returns an :class:`HFWrapper`: positional tensors in (the graph inputs, in spec
order), a tuple of selected output fields out, so the TorchScript exporter sees a plain
signature. ``transformers`` is imported lazily (only when a model is built).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

VOCAB = 128
SEQ = 16
IMAGE = 32


class HFWrapper(nn.Module):
    """Call ``model(**{name: tensor})`` and return the chosen output fields as a tuple."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = inputs
        self.output_names = outputs

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, args, strict=True)), return_dict=True)
        return tuple(out[k] for k in self.output_names)


def _tf() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


_TEXT = {"vocab_size": VOCAB, "max_position_embeddings": 40, "hidden_dropout_prob": 0.1}
_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_ENCODER_MLP = {"intermediate_size": 128, "attn_implementation": "eager"}


def bert() -> HFWrapper:
    """BertModel with its pooler: outputs last_hidden_state and pooler_output."""
    t = _tf()
    config = t.BertConfig(**_TEXT, **_ENCODER, **_ENCODER_MLP)
    return HFWrapper(t.BertModel(config), ("input_ids",), ("last_hidden_state", "pooler_output"))


def gpt2() -> HFWrapper:
    """GPT2Model (Conv1D projections, fused qkv Split, causal mask) with an attention mask."""
    t = _tf()
    config = t.GPT2Config(
        vocab_size=VOCAB, n_positions=40, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return HFWrapper(t.GPT2Model(config), ("input_ids", "attention_mask"), ("last_hidden_state",))


def distilbert() -> HFWrapper:
    """DistilBertModel with the default (SDPA) attention implementation."""
    t = _tf()
    config = t.DistilBertConfig(
        vocab_size=VOCAB, max_position_embeddings=40, dim=64, n_layers=2, n_heads=4,
        hidden_dim=128, attn_implementation="sdpa",
    )  # fmt: skip
    return HFWrapper(t.DistilBertModel(config), ("input_ids",), ("last_hidden_state",))


def roberta() -> HFWrapper:
    """RobertaForSequenceClassification: position ids from a CumSum over the padding mask,
    classification head on the first token."""
    t = _tf()
    config = t.RobertaConfig(**_TEXT, **_ENCODER, **_ENCODER_MLP, num_labels=3, pad_token_id=1)
    model = t.RobertaForSequenceClassification(config)
    return HFWrapper(model, ("input_ids",), ("logits",))


_VISION = {"image_size": IMAGE, "patch_size": 4, **_ENCODER, **_ENCODER_MLP}


def vit() -> HFWrapper:
    """ViTModel (no pooler): conv patch embedding, CLS token concat, position embeddings."""
    t = _tf()
    model = t.ViTModel(t.ViTConfig(**_VISION), add_pooling_layer=False)
    return HFWrapper(model, ("pixel_values",), ("last_hidden_state",))


def deit() -> HFWrapper:
    """DeiTForImageClassification: CLS + distillation tokens, Linear head on CLS."""
    t = _tf()
    model = t.DeiTForImageClassification(t.DeiTConfig(**_VISION, num_labels=10))
    return HFWrapper(model, ("pixel_values",), ("logits",))


def swin() -> HFWrapper:
    """SwinForImageClassification: window partition / shifted windows (Roll via Slice+Concat),
    relative position bias, patch merging (strided slices + concat + Linear)."""
    t = _tf()
    config = t.SwinConfig(
        image_size=IMAGE, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
        window_size=4, num_labels=10,
    )  # fmt: skip
    return HFWrapper(t.SwinForImageClassification(config), ("pixel_values",), ("logits",))


def convnext() -> HFWrapper:
    """ConvNextModel: channels-first LayerNorm in stem/downsampling, NHWC blocks with
    LayerNorm + Linear, layer scale; outputs last_hidden_state and pooler_output."""
    t = _tf()
    config = t.ConvNextConfig(
        hidden_sizes=[32, 64, 128], depths=[1, 1, 2], num_stages=3, patch_size=4,
        image_size=IMAGE, layer_scale_init_value=0.5,
    )  # fmt: skip
    return HFWrapper(
        t.ConvNextModel(config), ("pixel_values",), ("last_hidden_state", "pooler_output")
    )


def resnet() -> HFWrapper:
    """ResNetForImageClassification (bottleneck layers, BN, maxpool stem)."""
    t = _tf()
    config = t.ResNetConfig(
        embedding_size=32, hidden_sizes=[64, 128, 256], depths=[1, 2, 1],
        layer_type="bottleneck", num_labels=10,
    )  # fmt: skip
    return HFWrapper(t.ResNetForImageClassification(config), ("pixel_values",), ("logits",))


def segformer() -> HFWrapper:
    """SegformerForSemanticSegmentation: overlapping patch embeds, efficient attention with a
    strided reduction conv + LayerNorm, Mix-FFN (depthwise conv inside the MLP), all-MLP
    decoder with bilinear Resize, concat, 1x1 fuse conv + BN."""
    t = _tf()
    config = t.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[32, 64],
        num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=64, num_labels=4,
    )  # fmt: skip
    model = t.SegformerForSemanticSegmentation(config)
    return HFWrapper(model, ("pixel_values",), ("logits",))
