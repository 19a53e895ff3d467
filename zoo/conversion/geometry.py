"""Checkpoints fine-tuned at another geometry than the recipe's model: another patch grid (a
ViT's position embedding, a BEiT's relative position bias tables) or another window (Swin's
tables).

A recipe names the checkpoint tensor that carries its geometry and how to read it
(`geometry: {tensor: <regex>, kind: <kind>}`, the kinds in zoo.recipe.GEOMETRY_KINDS). When the
checkpoint's tensor differs from the recipe model's, `checkpoint_geometry` derives what both
models are built with -- timm's `create_model` kwargs and the Keras builder's -- and the size to
validate at, so the checkpoint loads as it is into the model timm itself builds with those
kwargs (resampling the tensors down to the recipe's geometry would lose detail, and the model
the user fine-tuned is the one at the checkpoint's geometry). A row count that fits no geometry
of that kind is refused naming the tensor and its shape; a difference of another kind (other
heads, another width) is left to the checkpoint loader, which lists every mismatch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from zoo.errors import SourceError


@dataclass(frozen=True)
class Geometry:
    tensor: str             # the checkpoint tensor it was read from
    shape: tuple
    torch_kwargs: dict      # timm.create_model kwargs
    keras_kwargs: dict      # Keras builder overrides
    input_size: int | None  # the validation size it implies (None: not derivable here)

    def record(self) -> dict:
        """What the report and config.json keep under weights.checkpoint (and --resume reads)."""
        return {"tensor": self.tensor, "shape": list(self.shape), "torch": self.torch_kwargs,
                "keras": self.keras_kwargs, "input_size": self.input_size}


def _patch(module) -> int | None:
    patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    return int(patch[0]) if patch else None


def _table_side(rows) -> int | None:
    """s with rows == (2s - 1)^2: the window or grid side of a relative position table."""
    root = math.isqrt(max(rows, 0))
    return (root + 1) // 2 if root * root == rows and root % 2 == 1 else None


def _unfit(key, tensor, what):
    raise SourceError(f"checkpoint tensor {key} {tuple(tensor.shape)} fits no {what}; it cannot "
                      f"be converted with this recipe")


def _pos_embed(module, key, tensor, own):
    """ViT/DeiT `pos_embed` (1, prefix + g^2, C): a g x g patch grid -> img_size g * patch."""
    if tensor.ndim != 3 or tensor.shape[-1] != own.shape[-1]:
        return None
    prefix = 0 if getattr(module, "no_embed_class", False) else getattr(module, "num_prefix_tokens", 0)
    side = math.isqrt(max(tensor.shape[1] - prefix, 0))
    if side < 1 or side * side != tensor.shape[1] - prefix:
        _unfit(key, tensor, f"square patch grid (rows: {prefix} prefix tokens + g^2 patches)")
    size = side * _patch(module)
    return {"img_size": size}, {"img_size": size}, size


def _window_table(module, key, tensor, own):
    """Swin `relative_position_bias_table` ((2w - 1)^2, heads): w x w windows. img_size: the
    smallest size at which the coarsest stage is one whole window (w times its reduction), which
    is how timm pairs them (window 7 at 224, window 12 at 384 with patch 4 and four stages)."""
    if tensor.ndim != 2 or tensor.shape[1] != own.shape[1]:
        return None
    window = _table_side(tensor.shape[0])
    if window is None:
        _unfit(key, tensor, "square window (a w x w window's table has (2w - 1)^2 rows)")
    info = getattr(module, "feature_info", None)
    size = window * max(i["reduction"] for i in info) if info else None
    return {"window_size": window, "img_size": size}, {"window": window, "img_size": size}, size


def _grid_table(module, key, tensor, own):
    """BEiT `relative_position_bias_table` ((2g - 1)^2 + 3, heads): a g x g patch grid (3 rows
    for the class token) -> img_size g * patch."""
    if tensor.ndim != 2 or tensor.shape[1] != own.shape[1]:
        return None
    side = _table_side(tensor.shape[0] - 3)
    if side is None:
        _unfit(key, tensor, "square patch grid (a g x g grid's table has (2g - 1)^2 + 3 rows)")
    size = side * _patch(module)
    return {"img_size": size}, {"img_size": size}, size


KINDS = {"pos_embed": _pos_embed, "window_table": _window_table, "grid_table": _grid_table}


def checkpoint_geometry(module, state, variant) -> Geometry | None:
    """The geometry of checkpoint `state` when the recipe's tensor tells one other than the
    recipe model's (`module`, built from the recipe); None when it is the same, absent or differs
    in another way. Only timm sources take the geometry as create_model kwargs; for another
    source a checkpoint of another geometry is refused, saying what to do."""
    spec = variant.recipe.geometry
    if spec is None:
        return None
    own = module.state_dict()
    key = next((k for k in state if k in own and spec.tensor.fullmatch(k)), None)
    if key is None or tuple(state[key].shape) == tuple(own[key].shape):
        return None
    derived = KINDS[spec.kind](module, key, state[key], own[key])
    if derived is None:
        return None
    torch_kwargs, keras_kwargs, size = derived
    if variant.source_kind != "timm":
        wanted = ", ".join(f"{k}={v}" for k, v in torch_kwargs.items() if v is not None)
        cls = f"{type(module).__module__}.{type(module).__name__}"
        raise SourceError(f"checkpoint tensor {key} {tuple(state[key].shape)} is for {wanted} "
                          f"(the recipe's model: {tuple(own[key].shape)}); {variant.source} "
                          f"hard-codes its geometry, so only timm sources are rebuilt at a "
                          f"checkpoint's: build {cls} with {wanted} in a python: source recipe "
                          f"(docs/recipe-format.md) and convert with that")
    return Geometry(key, tuple(state[key].shape), torch_kwargs, keras_kwargs, size)


def _fixed_image(spec) -> bool:
    return spec.layout == "image" and None not in spec.shape[1:]


def sized_inputs(specs, size):
    """The recipe's inputs with a fixed image height and width (BEiT: `[3, 224, 224]`) set to
    `size`, the size the models were built at (the checkpoint's geometry, or the input size they
    were rebuilt at); None: unchanged."""
    if size is None:
        return specs
    return tuple(replace(s, shape=(s.shape[0], size, size)) if _fixed_image(s) else s
                 for s in specs)


def resizes_fixed_input(variant) -> bool:
    """Whether another input size rebuilds this variant's models rather than being refused: a
    timm source whose recipe fixes the image size (weights laid out per patch position) and
    names the tensor that carries it (BEiT); timm's checkpoint filter resizes those tensors."""
    fixed = any(_fixed_image(s) for s in variant.input_specs())
    return fixed and variant.recipe.geometry is not None and variant.source_kind == "timm"
