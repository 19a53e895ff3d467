"""scripts/diff_layers.py: convert a catalogue model and show, layer by layer, where the Keras
model diverges from the PyTorch one (the comparison itself is zoo.conversion.divergence)."""
from __future__ import annotations

from zoo.conversion.divergence import format_diff, layer_diff
from zoo.conversion.pipeline import prepare
from zoo.io_spec import make_inputs

__all__ = ["diff_layers", "format_diff"]


def diff_layers(name, weights="random", num_classes=None, in_chans=None, input_size=None) -> dict:
    """Convert `name` without hyper-parameter checks and return the per-layer diff."""
    variant, tm, _kwargs, model, plan = prepare(name, weights, num_classes, in_chans,
                                                check_hparams=False)
    specs = variant.input_specs(in_chans)
    inputs = make_inputs(specs, input_size or variant.input_size, tm.preprocessing)
    return layer_diff(tm, model, plan, inputs, variant.tolerance, specs,
                      layout=variant.recipe.feature_layout)
