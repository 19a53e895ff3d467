"""Every builder configuration of the catalogue against its real timm/torchvision module.

Parametrised from `zoo.list_models()`, so a new recipe is tested without editing this file. Each
configuration is prepared once (module-scoped fixture) by `zoo.conversion.pipeline.prepare`, the
weight path of `zoo.convert`: the torch module with perturbed random weights (fixed seed, BN
statistics re-estimated) and the Keras model with those weights mapped strictly. Every expected
value is computed by that torch module; our code only produces the values under test.

Which variants: one per configuration, a configuration being (source, builder, builder kwargs
without the size kwargs below). Variants that differ only in depth or width (resnet50 / 101 /
152 / wide_resnet50_2, efficientnet_b0 ... b3, densenet121 / 169 / 201, vgg11 / 16, convnext
tiny / small / base, regnety_004 / 016) run the same code with more or wider blocks, so the
smallest stands for them: converting all 63 variants here took too long for CI (resnet152 alone
~40 s on two cores). Every other kwarg (strings, booleans, eps, groups, SE ratio, ...) selects code
and makes a configuration of its own, so does a kwarg this file does not know: a new recipe is
never folded into another silently. `scripts/convert_all.py` still converts every variant.
"""
import gc
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

import zoo
from helpers import MIN_SIZE, SMALL, copy_weights, eager, random_input, rel
from zoo.catalog import get_variant

ODD = (75, 93)   # odd and non-square: where torch's and Keras' padding conventions differ
# Builder kwargs that only scale a network (see the module docstring).
SIZE_KWARGS = frozenset({"depths", "dims", "widths", "block_config", "width_multiplier",
                         "depth_multiplier", "width_per_group", "group_width", "stem_width",
                         "width_factor", "middle_blocks", "entry_flow",
                         "depth", "dim", "heads", "patch", "img_size",   # ViT
                         "expansion", "num_features"})   # MobileViT
# Sources that run at one input size only: torchvision's VisionTransformer asserts its
# image_size (224), so it cannot run at SMALL or ODD. tests/test_family_vit.py maps a small
# torchvision ViT with the same recipe rules instead; convert_all.py converts these at 224.
FIXED_SIZE_SOURCES = frozenset({"torchvision:vit_b_16", "torchvision:vit_b_32"})


def _size(variant):
    """The sum of the numbers in the size kwargs: more or wider blocks, a bigger network."""
    def total(value):
        if isinstance(value, (list, tuple)):
            return sum(total(v) for v in value)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
    return total([v for k, v in variant.builder_kwargs.items() if k in SIZE_KWARGS])


def _fixed_image_size(variant):
    """The recipe fixes its image input's height and width (an `inputs:` shape without nulls:
    weights laid out per patch position, BEiT's relative position tables, MLP-Mixer's token MLP),
    so the model cannot run at SMALL or ODD: its family tests map a small real model instead."""
    return any(s.layout == "image" and None not in s.shape[1:] for s in variant.input_specs())


def configurations() -> list[str]:
    """The smallest catalogue variant of each (source, builder, non-size kwargs)."""
    table = {n: get_variant(n)[0] for n in zoo.list_models()}   # one name per weight tag
    groups = {}
    for name in zoo.list_models():
        v = table[name]
        if v.source in FIXED_SIZE_SOURCES or _fixed_image_size(v):
            continue
        code = {k: x for k, x in v.builder_kwargs.items() if k not in SIZE_KWARGS}
        key = (v.source_kind, v.builder, json.dumps(code, sort_keys=True))
        groups.setdefault(key, []).append(name)
    return sorted(min(names, key=lambda n: (_size(table[n]), n)) for names in groups.values())


@dataclass
class Case:
    name: str
    variant: object
    module: object   # the perturbed torch module
    model: object    # the Keras model with its weights
    size: int        # the small square input size
    torch_shapes: dict = field(default_factory=dict)   # filled by _stage_shapes

    @property
    def features(self) -> dict:
        return dict(self.variant.features)   # torch module -> keras layer


CONFIGURATIONS = configurations()


# Under pytest-xdist (`make test`, --dist loadgroup) all tests of one configuration go to one
# worker: else both workers would prepare the same models.
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.xdist_group(n))
                                        for n in CONFIGURATIONS])
def case(request):
    """One configuration at a time: pytest finishes every test of a param before the next, and
    the teardown frees the models (VGG alone holds 130M parameters in both frameworks)."""
    import keras

    from zoo.conversion.pipeline import prepare

    variant, tm, _kwargs, model, _plan = prepare(request.param)
    yield Case(request.param, variant, tm.module, model, MIN_SIZE.get(variant.builder, SMALL))
    del tm, model
    keras.backend.clear_session()
    gc.collect()


def _torch_outputs(case, x):
    from zoo.conversion.pipeline import torch_outputs

    return torch_outputs(case.module, x, case.features, layout=case.variant.recipe.feature_layout,
                         out_specs=case.variant.output_specs())


def _dense(variant):
    """Whether the recipe's outputs are maps (`layout: image`, e.g. segmentation logits) rather
    than one vector per sample: no classifier head to cut, no pooling to choose."""
    return any(s.layout == "image" for s in variant.output_specs())


def _assert_parity(case, x):
    """Every declared output (a classifier's `logits`, a segmentation model's `out`/`aux` maps)
    and every stage of the recipe against torch on `x`; the same class everywhere, per sample,
    or per pixel for 99.9% of a map's pixels (where two classes' scores lie within float32
    rounding of each other, either order is right)."""
    import keras

    from zoo.validate import compare, named_outputs

    ref = _torch_outputs(case, x)
    specs = case.variant.output_specs()
    outputs = named_outputs(case.model, specs)
    heads = keras.Model(case.model.input, [outputs[s.name] for s in specs])
    names = list(case.features.values())
    got = eager(heads, x, names)
    tol = case.variant.tolerance
    errors = {k: rel(g, ref["features"][k]) for k, g in zip(names, got[len(specs):])}
    # `unordered` outputs (detections) as sets of rows: equal scores leave their order open
    errors.update({s.name: compare(ref["outputs"][s.name], g,
                                   unordered=s.metric == "unordered")["max_rel"]
                   for s, g in zip(specs, got)})
    assert max(errors.values()) < tol, errors
    for s, g in zip(specs, got):
        if s.metric == "classification":
            agree = np.mean(g.argmax(-1) == ref["outputs"][s.name].argmax(-1))
            assert agree >= (0.999 if g.ndim > 2 else 1.0), (s.name, agree)


def test_parity_at_small_size(case):
    from zoo.io_spec import image_batch

    # noise and smooth image-like inputs, as validation uses
    _assert_parity(case, image_batch(case.size, 3, case.variant.preprocessing))


def _odd_size(module):
    """ODD, or the nearest multiples of the patch where the source's own PatchEmbed refuses
    other sizes (timm's Swin: dynamic size without `dynamic_img_pad`, which its constructor does
    not pass on); 76 x 92 still gives Swin odd grids (19 x 23) to pad and merge."""
    embed = getattr(module, "patch_embed", None)
    if embed is None or getattr(embed, "dynamic_img_pad", True) or embed.strict_img_size:
        return ODD
    return tuple(round(s / p) * p for s, p in zip(ODD, embed.patch_size))


def test_parity_at_odd_non_square_size(case):
    _assert_parity(case, random_input(*_odd_size(case.module), seed=3))


def _first_of_each(families) -> list:
    """The first configuration of each of these recipe families, marked like `case`'s params."""
    firsts = {}
    for name in CONFIGURATIONS:
        firsts.setdefault(get_variant(name)[0].recipe.family, name)
    return [pytest.param(firsts[f], marks=pytest.mark.xdist_group(firsts[f])) for f in families
            if f in firsts]


# The serving export is the slowest step of a conversion (Swin-T: ~50 s on two busy cores), so it
# runs for one configuration of each transformer family that runs at free sizes and of the
# segmentation models (named `out`/`aux` maps at free sizes). Other convolutional SavedModels are
# run by test_convert, test_formats and the detection tests; the fixed-size transformers (BEiT,
# MLP-Mixer, MaxViT, LeViT) by their family tests on small models.
@pytest.mark.parametrize("case", _first_of_each(("vit", "swin", "mobilevit", "segmentation")),
                         indirect=True)
def test_saved_model_serving_signature_matches_torch(case, tmp_path):
    """The SavedModel's serving_default signature (what TF Serving runs: free batch and spatial
    axes, outputs by name) against torch, held to the recipe's tolerance."""
    from zoo.export import save_model_files
    from zoo.io_spec import image_batch
    from zoo.validate import compare_outputs, saved_model_outputs

    x = image_batch(case.size, 3, case.variant.preprocessing)
    save_model_files(case.model, tmp_path, ["saved_model"])
    (spec,) = case.variant.input_specs()
    specs = case.variant.output_specs()
    got = saved_model_outputs(tmp_path / "saved_model", {spec.name: x}, specs)
    result = compare_outputs(_torch_outputs(case, x), got, case.variant.tolerance, specs)
    assert result["passed"], result


def test_keras_file_round_trip(case, tmp_path):
    """The `.keras` file reloads (custom layers registered, safe mode) to the same function."""
    import keras

    from zoo.models import feature_info

    path = tmp_path / "model.keras"
    case.model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = random_input(case.size, case.size, seed=4)
    for got, want in zip(eager(loaded, x), eager(case.model, x), strict=True):   # every output
        np.testing.assert_array_equal(got, want)
    assert feature_info(loaded) == feature_info(case.model)
    del loaded
    gc.collect()


def _headless_reference(case, x):
    """What include_top=False computes, from torch: timm's `forward_features`; for torchvision
    the map entering `avgpool`, else the (average-pooled) input of the recipe's classifier."""
    import torch

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    module = case.module
    channels_last = False
    with torch.no_grad():
        if hasattr(module, "forward_features"):
            out = module.forward_features(xt)
            # the recipe's feature_layout: the final map is laid out like the stages (Swin: NHWC)
            channels_last = case.variant.recipe.feature_layout == "tensor"
        else:
            target = module.avgpool if hasattr(module, "avgpool") else \
                module.get_submodule(case.variant.classifier)
            captured = {}
            hook = target.register_forward_pre_hook(
                lambda _m, args: captured.setdefault("x", args[0].detach().clone()))
            try:
                module(xt)
            finally:
                hook.remove()
            out = captured["x"]
    return out.permute(0, 2, 3, 1).numpy() if out.ndim == 4 and not channels_last else out.numpy()


def test_include_top_false(case):
    """The headless model ends where torch's features end: its map, or its average- or
    max-pooled vector, equals torch's. One pooling per configuration, in turn (building the
    model is most of this test's cost; the three endings are one shared code path after the
    builder's last layer, and each of them is still checked on a third of the catalogue)."""
    if _dense(case.variant):
        pytest.skip("the recipe's outputs are dense maps (layout: image): no classifier to cut")
    if not case.variant.classifies:
        pytest.skip("the recipe declares no classification output (a detector): no classifier "
                    "to cut")
    ref = _headless_reference(case, random_input(case.size, case.size, seed=5))
    pooling = [None, "avg", "max"][CONFIGURATIONS.index(case.name) % 3]
    if ref.ndim == 2:   # torchvision pooled it itself, always by average: compare that
        pooling = "avg"
    headless = copy_weights(case.model, zoo.create_model(case.name, include_top=False,
                                                         pooling=pooling))
    (got,) = eager(headless, random_input(case.size, case.size, seed=5))
    axes = tuple(range(1, ref.ndim - 1))   # H and W of a map, N of tokens (B, N, C)
    want = ref if ref.ndim == 2 or pooling is None else \
        {"avg": ref.mean(axis=axes), "max": ref.max(axis=axes)}[pooling]
    assert got.shape == want.shape
    assert rel(got, want) < case.variant.tolerance


def _reduction(size, height):
    """The stride of a map of `height` rows at input `size`, as a power of two ("valid" convs
    leave maps a few pixels short of size / stride: AlexNet, Inception)."""
    return int(2 ** round(np.log2(size / height)))


def _stage_shapes(case, model):
    """{stage: (height, channels)} of the Keras `model`'s outputs and of torch's recipe stages,
    at the recipe's input size, where a reduction can be read off (at 64 px AlexNet's stride-32
    map is 1 x 1). One image of zeros: only shapes are used."""
    size = case.variant.input_size
    keras_shapes = model.compute_output_shape((1, size, size, 3))
    keras_shapes = [keras_shapes] if isinstance(keras_shapes[0], int) else keras_shapes
    if not case.torch_shapes:   # once per configuration: a forward pass at up to 384 px
        ref = _torch_outputs(case, np.zeros((1, size, size, 3), np.float32))["features"]
        case.torch_shapes.update({k: (v.shape[1], v.shape[-1]) for k, v in ref.items()})
    return {n: (s[1], s[-1]) for n, s in zip(model.output_names, keras_shapes)}, case.torch_shapes


def test_features_only_and_feature_info(case):
    """features_only returns every feature stage: the maps equal torch's wherever the recipe
    names the torch stage; the channels and reductions that `feature_info` declares are the
    torch stage outputs' and those of timm's own feature_info for the same modules."""
    from zoo.models import feature_info

    feats = copy_weights(case.model, zoo.create_model(case.name, features_only=True))
    info = {i["name"]: i for i in feature_info(feats)}
    assert feats.output_names == list(info) == [i["name"] for i in feature_info(case.model)]
    x = random_input(case.size, case.size, n=1, seed=6)
    outs = dict(zip(feats.output_names, eager(feats, x)))
    ref = _torch_outputs(case, x)["features"]
    compared = [k for k in case.features.values() if k in outs]
    assert compared, "no recipe feature is a feature stage"
    for k in compared:
        assert rel(outs[k], ref[k]) < case.variant.tolerance, k

    size = case.variant.input_size
    keras_shapes, torch_shapes = _stage_shapes(case, feats)
    for name, (height, channels) in keras_shapes.items():
        assert info[name]["channels"] == channels, name
        if len(feats.get_layer(name).output.shape) == 4:   # tokens (B, N, C) have no height:
            assert info[name]["reduction"] == _reduction(size, height), name   # timm's below
        assert torch_shapes.get(name, (height, channels)) == (height, channels), name
    if case.variant.source_kind == "timm":
        # the table that timm.create_model(arch, features_only=True).feature_info reads
        timm_info = {i["module"]: (i["num_chs"], i["reduction"]) for i in case.module.feature_info}
        pairs = [(t, k) for t, k in case.features.items() if t in timm_info]
        assert pairs, "no recipe stage is one of timm's feature taps"
        for t, k in pairs:
            assert (info[k]["channels"], info[k]["reduction"]) == timm_info[t], (t, k)


def test_out_indices_select_feature_stages(case):
    """out_indices picks stages by their position in feature_info (negative from the end, as
    in timm); their shapes are torch's stages'."""
    from zoo.models import feature_info

    stages = [i["name"] for i in feature_info(case.model)]
    picked = zoo.create_model(case.name, features_only=True, out_indices=(1, -1))
    assert picked.output_names == [stages[1], stages[-1]]
    keras_shapes, torch_shapes = _stage_shapes(case, picked)
    for name, shape in keras_shapes.items():
        assert torch_shapes.get(name, shape) == shape, name
    with pytest.raises(zoo.ZooError):
        zoo.create_model(case.name, features_only=True, out_indices=(len(stages),))
