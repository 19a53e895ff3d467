"""Shared test utilities (imported after conftest has loaded torch first)."""
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = 64   # validation resolution for end-to-end tests: small, still 2x2 at stage 4
# Builders whose torch source refuses SMALL: below 75 x 75 a map of Inception v3 shrinks to
# nothing before Mixed_7a. Swin runs at the smallest size its sources allow with every stage
# (32: stage 4 is 1 x 1; stage 1 still pads and shifts its windows), for speed.
MIN_SIZE = {"inception_v3": 75, "swin": 32}


def run_script(script, *args, env=None, timeout=900):
    """Run scripts/<script> in a fresh interpreter; returns CompletedProcess (text)."""
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)


def run_python(code, env=None, timeout=600):
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=ROOT)


# ------------------------------------------------------------------ family tests
# Torch and Keras are imported inside the functions: this module is loaded by conftest, before
# any test has asked for Keras.

def random_input(h=SMALL, w=SMALL, n=2, seed=0, channels=3):
    """A float32 NHWC batch of standard-normal pixels from a fixed seed."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, h, w, channels)).astype(np.float32)


def torch_nhwc(module, x):
    """The torch module's output (no grad) for an NHWC numpy batch, as numpy."""
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def rel(got, ref):
    """max|got - ref| / max|ref|."""
    import numpy as np

    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def eager(model, x, layers=()):
    """[every output of `model`, then the outputs of the named layers] on `x`, as numpy, from
    one eager call (inference mode). For a model run once or twice this is several times faster
    than predict_on_batch, whose tf.function trace costs seconds on a large graph."""
    import keras
    import numpy as np

    probe = keras.Model(model.input, [*model.outputs, *(model.get_layer(n).output for n in layers)])
    out = probe(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def assert_same_logits(model, module, x, tolerance, stage=None, stage_shape=None):
    """The Keras `model`'s logits on `x` are the torch `module`'s (same top-1 too); with
    `stage`, that layer's map has `stage_shape` there (e.g. the map an adaptive pool sees)."""
    got, *feature = eager(model, x, [stage] if stage else [])
    if stage:
        assert feature[0].shape == stage_shape
    ref = torch_nhwc(module, x)
    assert rel(got, ref) < tolerance
    assert (got.argmax(1) == ref.argmax(1)).all()


def rel_err(module, model, h=SMALL, w=SMALL, feature=None):
    """max|keras - torch| / max|torch| of the logits on a fixed (2, h, w, 3) input, or of an
    intermediate output (feature = (torch module path, keras layer name))."""
    import keras
    import numpy as np
    import torch

    x = np.random.default_rng(11).standard_normal((2, h, w, 3)).astype(np.float32)
    captured = {}
    hook = None
    if feature:
        hook = module.get_submodule(feature[0]).register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("f", out.detach().clone()))
        model = keras.Model(model.inputs, model.get_layer(feature[1]).output)
    try:
        with torch.no_grad():
            ref = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    finally:
        if hook:
            hook.remove()
    if feature:
        ref = captured["f"].permute(0, 2, 3, 1).numpy()
    return rel(eager(model, x)[0], ref)


@contextmanager
def keras_float64():
    """Build Keras layers in float64 (their dtype policy is fixed at construction)."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)


def build(name, **builder_overrides):
    """The Keras model of variant `name`, built with the recipe's kwargs + overrides (the
    builder is looked up at call time: whatever a test monkeypatched in its module applies)."""
    from zoo.catalog import get_variant
    from zoo.models import get_builder

    variant, _ = get_variant(name)
    return get_builder(variant.builder)(**{**variant.builder_kwargs, **builder_overrides})


def plan_for(name, module, model):
    """The mapping plan of the torch `module`'s weights onto the Keras `model` with the rules
    of variant `name` (raises zoo.MappingError where the engine refuses)."""
    from zoo.catalog import get_variant
    from zoo.conversion.mapping import plan_mapping

    variant, _ = get_variant(name)
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return plan_mapping(state, model, variant.rules, variant.recipe.ignore,
                        modules=dict(module.named_modules()), context=name)


def mapped_onto(name, module, **builder_overrides):
    """Keras model built with the recipe's kwargs + overrides, with `module`'s weights mapped."""
    from zoo.conversion.mapping import apply_plan

    model = build(name, **builder_overrides)
    apply_plan(model, plan_for(name, module, model))
    return model


def mapped(name, float64=False, **builder_overrides):
    """(perturbed torch module, Keras model built with the recipe's kwargs + overrides, mapped):
    a fresh torch module (same seed as zoo.convert). float64: the Keras model is built in
    float64 and the torch module converted to double after mapping."""
    from zoo.catalog import get_variant
    from zoo.conversion.mapping import apply_plan
    from zoo.conversion.sources import load_torch_model

    variant, tag = get_variant(name)
    module = load_torch_model(variant, tag, "random").module
    with keras_float64() if float64 else nullcontext():
        model = build(name, **builder_overrides)
    apply_plan(model, plan_for(name, module, model))
    return (module.double() if float64 else module), model


def assert_layernorm_eps_refused(name, source_eps, wrong_eps, first, last, count, module=None,
                                 **builder_overrides):
    """The engine refuses `name` built with LayerNorm epsilon `wrong_eps` where the source uses
    `source_eps`, naming every LayerNorm: `first` and `last` as (torch module, keras layer), and
    `count` problems in all (Keras' default 1e-3 and torch's 1e-5 both differ from the 1e-6 of
    ViT/ConvNeXt-style models: a silently-off model otherwise). module: a (small) torch module to
    map instead of the recipe's own; builder_overrides: the matching builder arguments."""
    import pytest

    import zoo

    with pytest.raises(zoo.MappingError) as e:
        if module is None:
            mapped(name, norm_eps=wrong_eps, **builder_overrides)
        else:
            plan_for(name, module, build(name, norm_eps=wrong_eps, **builder_overrides))
    msg = str(e.value)
    assert f"eps {source_eps!r} != keras epsilon {wrong_eps!r}" in msg
    for torch_name, keras_name in (first, last):
        assert f"torch module {torch_name!r} -> keras layer {keras_name!r}" in msg
    assert f"{count} problem(s)" in msg


def copy_weights(src, dst):
    """Copy `src`'s weights into `dst` layer by layer (by name), for every layer that has any."""
    for layer in dst.layers:
        if layer.weights:
            layer.set_weights(src.get_layer(layer.name).get_weights())
    return dst


def rebuilt(full, name, **builder_overrides):
    """The recipe's Keras model built again with `builder_overrides` (and whatever a test
    monkeypatched in the builder's module), carrying `full`'s weights copied layer by layer
    (the overrides change functions, not variable names or shapes)."""
    return copy_weights(full, build(name, **builder_overrides))


def validation_parity(name, module, model, x, tolerance):
    """What validation measures: worst max_rel over the logits and every recipe feature."""
    from zoo.catalog import get_variant
    from zoo.conversion.pipeline import torch_outputs
    from zoo.validate import compare_outputs, keras_outputs

    feats = dict(get_variant(name)[0].features)
    return compare_outputs(torch_outputs(module, x, feats),
                           keras_outputs(model, x, list(feats.values())), tolerance)


def pipeline_parity(name):
    """What zoo.convert measures at SMALL, on a model prepared by the pipeline (without its
    layer-by-layer diagnosis of a failure): builders monkeypatched by the test apply."""
    from zoo.conversion.pipeline import prepare, torch_outputs
    from zoo.io_spec import image_batch
    from zoo.validate import compare_outputs, keras_outputs

    variant, tm, _, model, _ = prepare(name)
    x = image_batch(SMALL, 3, tm.preprocessing)
    features = dict(variant.features)
    return compare_outputs(torch_outputs(tm.module, x, features),
                           keras_outputs(model, x, list(features.values())), variant.tolerance)


def assert_one_mapping_table(arch, builder):
    """timm/<arch> and torchvision/<arch> use the same Keras builder and the same rules, none of
    them restricted to one source (the two sources share their module names)."""
    from zoo.catalog import get_variant

    timm_v, _ = get_variant(f"timm/{arch}")
    tv_v, _ = get_variant(f"torchvision/{arch}")
    assert timm_v.rules == tv_v.rules and timm_v.builder == tv_v.builder == builder
    assert not any(r.only or r.skip for r in timm_v.rules)


def recipe_copy(tmp_path, monkeypatch, recipe, variant, new_name, edit):
    """A copy of recipes/<recipe>.yaml, changed by `edit(data)`, holding only `variant` renamed
    `new_name`, put first on ZOO_RECIPE_PATH for this test. Rules restricted to variants by
    `only`/`skip` are resolved for `variant` (the loader refuses globs that match no variant)."""
    from fnmatch import fnmatchcase

    import yaml

    def matches(globs):
        return any(fnmatchcase(variant, g) for g in ([globs] if isinstance(globs, str) else globs))

    def applies(rule):
        return matches(rule.get("only", variant)) and not matches(rule.get("skip", []))

    data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    edit(data)
    data["mapping"] = [{k: v for k, v in rule.items() if k not in ("only", "skip")}
                       for rule in data["mapping"] if applies(rule)]
    data["variants"] = {new_name: data["variants"][variant]}
    (tmp_path / f"{new_name.replace('/', '_')}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ZOO_RECIPE_PATH",
                       os.pathsep.join([str(tmp_path), os.environ.get("ZOO_RECIPE_PATH", "")]))


def assert_plain_linear_breaks_only_the_logits(tmp_path, monkeypatch, recipe, variant,
                                               torch_pattern, input_size, tolerance):
    """The flatten-order pitfall: a copy of the recipe whose rule for `torch_pattern` maps the
    Linear after the flatten with plain `linear` instead of `linear_after_flatten` (same shapes)
    fails validation on the logits only; every stage still matches."""
    import pytest

    import zoo

    def edit(data):
        for rule in data["mapping"]:
            if rule["torch"] == torch_pattern:
                assert rule["transform"] == "linear_after_flatten"
                rule["transform"] = "linear"
                rule.pop("args")

    name = f"test/{recipe}_plain_linear"
    recipe_copy(tmp_path, monkeypatch, recipe, variant, name, edit)
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert(name, input_size=input_size)
    parity = e.value.report["parity"]["in_memory"]
    assert parity["outputs"]["logits"]["max_rel"] > 1e-1
    assert all(f["max_rel"] < tolerance for f in parity["features"].values())


def assert_init_hides_swapped_blocks(tmp_path, monkeypatch, recipe, arch, swap, tolerance):
    """A copy of recipes/<recipe>.yaml whose first rules map the modules `swap[0]` of blocks 0
    and 1 crosswise onto the Keras layers `swap[1]` (with transform `swap[2]`; "{}" is the block
    index): same shapes, so only the numbers can tell. With timm's default init for `arch` the
    wrong model matches torch, because that init silences every residual branch; the pipeline
    perturbs every parameter first, and the same mistake then fails validation at stage 1."""
    import pytest
    import timm

    import zoo

    torch_fmt, keras_fmt, transform = swap

    def edit(data):   # first match wins
        data["mapping"] = [{"torch": torch_fmt.format(a), "keras": keras_fmt.format(b),
                            "transform": transform} for a, b in ((0, 1), (1, 0))] + data["mapping"]

    name = f"test/{arch}_swapped_blocks"
    recipe_copy(tmp_path, monkeypatch, recipe, f"timm/{arch}", name, edit)
    module = timm.create_model(arch).eval()
    x = random_input()
    blind = rel(mapped_onto(name, module).predict_on_batch(x), torch_nhwc(module, x))
    assert blind < 1e-5, blind
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert(name, input_size=SMALL)
    parity = e.value.report["parity"]["in_memory"]
    assert parity["features"]["stage1"]["max_rel"] > 10 * tolerance, parity
    assert not parity["passed"]



def user_recipes_env(tmp_path, variants, module_name, module_source):
    """Env for a subprocess that sees a user recipe (ZOO_RECIPE_PATH) with `variants` — ResNet
    builds mapped by recipes/resnet.yaml's plain rules — and a Python module (PYTHONPATH) that
    `python:` sources of those variants can name."""
    import yaml

    data = yaml.safe_load((ROOT / "recipes" / "resnet.yaml").read_text())
    data["mapping"] = [{k: v for k, v in r.items() if k != "skip"} for r in data["mapping"]
                       if "only" not in r]
    data["variants"] = variants
    d = tmp_path / "recipes"
    d.mkdir()
    (d / "user.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / f"{module_name}.py").write_text(module_source)
    return {"ZOO_RECIPE_PATH": str(d),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def perturbed_params(module, seed=0, scale=0.3):
    """The torch module in eval mode with every parameter drawn afresh (N(0, scale²), fixed
    seed); buffers stay as the module derived them. For module-level parity tests."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * scale))
    return module.eval()


def assign_leaves(layer, tensors, transform="linear"):
    """Assign torch `tensors` ({leaf: tensor}) to the Keras `layer`'s variables with the leaf
    functions of `transform`, as the mapping engine applies them."""
    from zoo.transforms import TRANSFORMS

    t = TRANSFORMS[transform]
    kvars = {v.path.rsplit("/", 1)[-1]: v for v in layer.weights}
    for leaf, tensor in tensors.items():
        kname, fn = t.leaf(leaf)
        kvars[kname].assign(fn(tensor.detach().numpy(), target_shape=tuple(kvars[kname].shape)))


def assert_saved_model_reproduces(model, x, want, tmp_path, tol=1e-5):
    """The model's SavedModel, exported as the pipeline exports it, run through its
    serving_default signature (what TF Serving runs), gives torch's logits `want` on `x`."""
    from zoo.export import save_model_files
    from zoo.validate import saved_model_outputs

    save_model_files(model, tmp_path, ["saved_model"])
    got = saved_model_outputs(tmp_path / "saved_model", {"image": x})["outputs"]["logits"]
    assert rel(got, want) < tol
