"""Checks for families whose models run at one input size (BEiT, MLP-Mixer): tests/test_catalogue.py
skips them (it runs every model at small sizes), so their family tests run these on a small real
timm model mapped by the recipe's rules instead. Imported after conftest has loaded torch."""
from helpers import assert_saved_model_reproduces, build, copy_weights, eager, plan_for, rel, torch_nhwc


def mapped_small(name, module, **kwargs):
    """The recipe's Keras builder with `kwargs`, every tensor of `module` mapped by its rules."""
    from zoo.conversion.mapping import apply_plan

    model = build(name, **kwargs)
    plan = plan_for(name, module, model)
    assert {a.torch_key for a in plan} == set(module.state_dict())   # nothing left over
    apply_plan(model, plan)
    return model


def assert_logits_and_blocks(module, model, x, depth):
    """Logits (same top-1) and every block's tokens equal timm's (`blocks.<i>` -> `block<i>`)."""
    captured = {}
    hooks = [module.blocks[i].register_forward_hook(
        lambda _m, _i, out, i=i: captured.__setitem__(f"block{i}", out.numpy()))
        for i in range(depth)]
    try:
        ref = torch_nhwc(module, x)
    finally:
        for h in hooks:
            h.remove()
    logits, *blocks = eager(model, x, [f"block{i}" for i in range(depth)])
    assert rel(logits, ref) < 1e-5
    assert (logits.argmax(1) == ref.argmax(1)).all()
    for i, got in enumerate(blocks):
        assert rel(got, captured[f"block{i}"]) < 1e-5, i


def assert_headless_features_and_files(name, module, model, x, tmp_path, **kwargs):
    """What the catalogue checks: include_top=False ends at timm's forward_features;
    features_only gives every block with timm's feature_info channels and reduction; the
    `.keras` file reloads in safe mode to the same function; the SavedModel's serving signature
    gives timm's logits. Returns the reloaded model."""
    import keras
    import numpy as np
    import torch

    from zoo.models import feature_info

    headless = copy_weights(model, build(name, include_top=False, **kwargs))
    with torch.no_grad():
        want = module.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert rel(eager(headless, x)[0], want) < 1e-5

    feats = copy_weights(model, build(name, features_only=True, **kwargs))
    assert [(i["name"], i["channels"], i["reduction"]) for i in feature_info(feats)] == [
        (f"block{i}", t["num_chs"], t["reduction"]) for i, t in enumerate(module.feature_info)]

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(eager(loaded, x)[0], eager(model, x)[0])
    assert_saved_model_reproduces(model, x, torch_nhwc(module, x), tmp_path)
    return loaded


def assert_other_sizes_refused(name, recipe_file, builder_reason):
    """The builder refuses another input shape saying why (`builder_reason`, a regex), and the
    conversion refuses another input_size naming the recipe that fixes the size and the
    builder's reason, before any model is built."""
    import pytest

    import zoo

    with pytest.raises(ValueError, match=builder_reason):
        build(name, input_shape=(96, 96, 3))
    with pytest.raises(zoo.ZooError, match=rf"input_size 96 refused: recipe {recipe_file} "
                                           rf"fixes input 'image' at 224x224 \(.*{builder_reason}"):
        zoo.convert(name, input_size=96)
