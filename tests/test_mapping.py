"""The strict mapping engine on a tiny hand-made torch module and Keras model: a clean plan gives
parity, and every kind of mistake is reported (all at once) with the names needed to fix it."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import re

import keras
import numpy as np
import pytest
import torch
from torch import nn

from zoo.conversion.mapping import MAX_REPORTED, apply_plan, keras_layer_path, plan_mapping
from zoo.errors import MappingError
from zoo.recipe import Rule

IGNORE = [re.compile(r".*\.num_batches_tracked")]


def rule(i, pattern, template, transform, args=None, module_type=None):
    return Rule(i, re.compile(pattern), template, transform, args or {}, module_type=module_type)


def rules(fc=True):
    out = [rule(0, "conv", "c", "conv2d"),
           rule(1, "bn", "b", "batchnorm"),
           rule(2, r"blocks\.(\d+)", "block{1}", "conv2d")]
    if fc:
        out.append(rule(3, "fc", "f", "linear"))
    return out


class Tiny(nn.Module):
    """conv -> bn -> relu -> blocks.0 -> blocks.1 -> mean -> fc (+ optional unused fc2)."""

    def __init__(self, fc2=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)])
        self.fc = nn.Linear(4, 5)
        if fc2:
            self.fc2 = nn.Linear(4, 5)
        rng = np.random.default_rng(0)
        with torch.no_grad():   # perturbed: non-default BN stats and affine, random weights
            for name, t in list(self.named_parameters()) + list(self.named_buffers()):
                if t.is_floating_point():
                    v = rng.standard_normal(tuple(t.shape)).astype(np.float32)
                    if name.endswith("running_var") or name == "bn.weight":
                        v = np.abs(v) + 0.5
                    t.copy_(torch.from_numpy(v))
            self.bn.num_batches_tracked.fill_(7)
        self.eval()

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.fc(x.mean((2, 3)))


def keras_tiny(units=5, eps=1e-5, momentum=0.9, conv_bias=False, conv_stride=1):
    inp = keras.Input((9, 7, 3))
    x = keras.layers.Conv2D(4, 3, strides=conv_stride, padding="same", use_bias=conv_bias,
                            name="c")(inp)
    x = keras.layers.BatchNormalization(epsilon=eps, momentum=momentum, name="b")(x)
    x = keras.layers.ReLU()(x)
    for i in range(2):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"block{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(units, name="f")(x))


def state_of(tm):
    return {k: v.detach().numpy() for k, v in tm.state_dict().items()}


def mapping_error(tm, km, rule_list=None, ignore=IGNORE, **kwargs) -> str:
    with pytest.raises(MappingError) as info:
        plan_mapping(state_of(tm), km, rules() if rule_list is None else rule_list, ignore,
                     **kwargs)
    return str(info.value)


def contains(msg, *parts):
    for p in parts:
        assert p in msg, f"{p!r} not in:\n{msg}"


# ---------------------------------------------------------------------------------------- success

def test_clean_plan_maps_every_tensor_and_gives_parity():
    tm, km = Tiny(), keras_tiny()
    state = state_of(tm)
    plan = plan_mapping(state, km, rules(), IGNORE, modules=dict(tm.named_modules()))
    assert sorted(a.torch_key for a in plan) == sorted(k for k in state if "num_batches" not in k)
    assert sorted(a.keras_path for a in plan) == sorted(v.path for v in km.weights)
    by_key = {a.torch_key: a for a in plan}
    assert by_key["blocks.1.weight"].keras_path == "block1/kernel"
    assert by_key["bn.running_var"].keras_path == "b/moving_variance"
    assert by_key["fc.weight"].rule.index == 3

    apply_plan(km, plan)
    x = np.random.default_rng(1).standard_normal((2, 9, 7, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(km(x, training=False))
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5


def test_assigning_while_planning_fills_the_variables_and_keeps_only_names():
    """plan_mapping(assign=True) (the pipeline's way: no plan holding a copy of every weight)
    gives the model applying the plan gives, and a plan without arrays. Every tensor is moved
    off its initial value first: torch's BN stats 0/1 equal Keras' initial ones, and would pass
    unassigned."""
    rng = np.random.default_rng(7)
    state = {k: v + rng.uniform(0.5, 1.5, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in state_of(Tiny()).items()}
    streamed, applied = keras_tiny(), keras_tiny()
    plan = plan_mapping(state, streamed, rules(), IGNORE, assign=True)
    assert plan and all(a.array is None for a in plan)
    apply_plan(applied, plan_mapping(state, applied, rules(), IGNORE))
    for a, b in zip(streamed.weights, applied.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, fresh in zip(streamed.weights, keras_tiny().weights, strict=True):
        assert not np.array_equal(a.numpy(), fresh.numpy()), a.path


def test_assigning_while_planning_still_checks_the_whole_model_first_error_last():
    """With assign=True a problem is still reported with every other problem of the model (the
    variables checked before it were assigned; the caller discards the model)."""
    tm = Tiny()
    state = state_of(tm)
    del state["fc.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(MappingError) as e:
        plan_mapping(state, keras_tiny(), rules(), IGNORE, assign=True)
    assert "'extra'" in str(e.value) and "f/bias" in str(e.value)


def test_apply_plan_never_shares_memory_with_the_torch_state():
    """apply_plan lets a variable adopt the buffer of an array the transform made (no copy) but
    must copy one that is a view of the torch state: a later write to the torch tensors (the
    float64 validation copy, a user's module) must not reach the Keras model."""
    tm = Tiny()
    tm.fc = nn.Linear(4, 300_000)   # a kernel big enough for the aligned slab copy
    km = keras_tiny(units=300_000)
    state = state_of(tm)
    plan = plan_mapping(state, km, rules(), IGNORE)
    owned = {a.torch_key: a.owned for a in plan}
    assert owned["fc.weight"] and owned["conv.weight"]          # transposed copies
    assert not owned["fc.bias"] and not owned["bn.running_mean"]   # views of torch's tensors
    apply_plan(km, plan)
    kvars = {v.path: v for v in km.weights}
    before = {p: np.array(v.numpy()) for p, v in kvars.items()}
    np.testing.assert_array_equal(before["f/kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(before["f/bias"], state["fc.bias"])
    with torch.no_grad():
        for t in tm.state_dict().values():
            t.add_(1)
    for p, v in kvars.items():
        np.testing.assert_array_equal(v.numpy(), before[p], err_msg=p)
    # ...while the big kernel was adopted, not copied: its variable reads the plan's buffer
    big = next(a for a in plan if a.torch_key == "fc.weight")
    big.array[0, :3] = (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(kvars["f/kernel"].numpy()[0, :3], [1.0, 2.0, 3.0])


def test_keras_layer_path_fills_numbered_and_named_groups():
    r = rule(0, r"layer(?P<stage>\d)\.(\d+)(\.conv)?", "s{stage}_b{2}{3}", "conv2d")
    assert keras_layer_path(r, r.torch.fullmatch("layer3.12")) == "s3_b12"   # unmatched group -> ""
    assert keras_layer_path(r, r.torch.fullmatch("layer3.12.conv")) == "s3_b12.conv"


def test_first_matching_rule_wins_and_module_type_restricts():
    tm, km = Tiny(), keras_tiny()
    modules = dict(tm.named_modules())
    # a catch-all conv rule restricted to Linear must be skipped for the Conv2d "conv"
    typed = [rule(9, "conv|fc", "f", "linear", module_type="Linear")] + rules(fc=False)
    plan = plan_mapping(state_of(tm), km, typed, IGNORE, modules=modules)
    assert {a.torch_key: a.rule.index for a in plan}["conv.weight"] == 0
    assert {a.torch_key: a.rule.index for a in plan}["fc.weight"] == 9
    msg = mapping_error(tm, km, typed)          # module_type needs the modules
    contains(msg, "rule #9", "module_type 'Linear'", "torch modules are needed")


# ----------------------------------------------------------------------------------------- errors

def test_missing_rule_names_the_torch_module():
    msg = mapping_error(Tiny(), keras_tiny(), rules(fc=False))
    contains(msg, "no mapping rule matches torch module 'fc'", "fc.weight", "fc.bias")


def test_unused_tensor_names_the_key():
    tm = Tiny()
    tm.bn.register_parameter("extra", nn.Parameter(torch.ones(4)))
    msg = mapping_error(tm, keras_tiny())
    contains(msg, "bn.extra", "transform 'batchnorm' has no tensor 'extra'", "rule #1")


def test_num_batches_tracked_must_be_ignored():
    msg = mapping_error(Tiny(), keras_tiny(), ignore=[])
    contains(msg, "bn.num_batches_tracked", "has no tensor 'num_batches_tracked'", "ignore pattern")


def test_duplicate_assignment_names_both_keys():
    tm = Tiny(fc2=True)
    dup = rules(fc=False) + [rule(3, "fc2?", "f", "linear")]
    msg = mapping_error(tm, keras_tiny(), dup)
    contains(msg, "already assigned", "duplicate assignment", "'f/kernel'", "fc.weight", "fc2.weight",
             "'f/bias'", "fc.bias", "fc2.bias")


def test_shape_mismatch_names_key_path_shapes_and_rule():
    msg = mapping_error(Tiny(), keras_tiny(units=6))
    contains(msg, "shape mismatch", "torch fc.weight (5, 4)", "-> linear -> (4, 5)",
             "keras f/kernel is (4, 6)", "rule #3", "'fc'", "torch fc.bias (5,)", "f/bias is (6,)")


def test_keras_variable_never_assigned_names_the_path():
    msg = mapping_error(Tiny(), keras_tiny(conv_bias=True))
    contains(msg, "keras variable 'c/bias' (4,) is never assigned")


def test_missing_keras_variable_suggests_close_names():
    bad = rules()
    bad[1] = rule(1, "bn", "bb", "batchnorm")
    msg = mapping_error(Tiny(), keras_tiny(), bad)
    contains(msg, "bn.weight", "keras variable 'bb/gamma' does not exist", "close:", "'b/gamma'")


def test_transform_failure_is_reported_with_context():
    inp = keras.Input((3, 5, 4))
    km = keras.Model(inp, keras.layers.Dense(2, name="f")(keras.layers.Flatten()(inp)))
    state = {"fc.weight": np.zeros((2, 60), np.float32), "fc.bias": np.zeros(2, np.float32)}
    bad = [rule(0, "fc", "f", "linear_after_flatten", {"chw": [4, 4, 4]})]
    with pytest.raises(MappingError) as info:
        plan_mapping(state, km, bad, [])
    contains(str(info.value), "fc.weight (2, 60) -> f/kernel (60, 2)", "transform failed",
             "C*H*W = 64")
    ok = [rule(0, "fc", "f", "linear_after_flatten", {"chw": [4, 3, 5]})]
    assert len(plan_mapping(state, km, ok, [])) == 2


@pytest.mark.parametrize("keras_kwargs, problem", [
    ({"eps": 1e-3}, "eps 1e-05 != keras epsilon 0.001"),
    ({"momentum": 0.99}, "momentum 0.1 needs keras momentum 0.9"),
])
def test_batchnorm_hparams_checked_only_with_modules(keras_kwargs, problem):
    tm = Tiny()
    km = keras_tiny(**keras_kwargs)
    state, modules = state_of(tm), dict(tm.named_modules())
    # shapes are all right, so without the modules nothing can notice ...
    assert plan_mapping(state, km, rules(), IGNORE)
    assert plan_mapping(state, km, rules(), IGNORE, modules=modules, check_hparams=False)
    # ... with them, the hyper-parameter check does
    msg = mapping_error(tm, km, modules=modules)
    contains(msg, "torch module 'bn' -> keras layer 'b'", problem, "rule #1")


def test_conv_stride_mismatch_detected():
    tm = Tiny()
    msg = mapping_error(tm, keras_tiny(conv_stride=2), modules=dict(tm.named_modules()))
    contains(msg, "torch module 'conv' -> keras layer 'c'", "stride (1, 1) != keras strides (2, 2)")


def test_all_problems_reported_in_one_error():
    tm = Tiny()
    msg = mapping_error(tm, keras_tiny(eps=1e-3, conv_bias=True), rules(fc=False), ignore=[],
                        modules=dict(tm.named_modules()), context="timm/tiny")
    lines = msg.splitlines()
    assert lines[0] == "weight mapping failed for timm/tiny (6 problem(s)):"
    assert len(lines) == 7
    contains(msg, "no mapping rule matches torch module 'fc'",
             "bn.num_batches_tracked",
             "eps 1e-05 != keras epsilon 0.001",
             "'c/bias' (4,) is never assigned",
             "'f/kernel' (4, 5) is never assigned",
             "'f/bias' (5,) is never assigned")


def test_long_error_lists_are_truncated():
    n = MAX_REPORTED + 5
    state = {f"head{i}.weight": np.zeros((2, 2), np.float32) for i in range(n)}
    inp = keras.Input((2,))
    km = keras.Model(inp, keras.layers.Dense(2, use_bias=False, name="f")(inp))
    with pytest.raises(MappingError) as info:
        plan_mapping(state, km, [rule(0, "fc", "f", "linear")], [])
    msg = str(info.value)
    contains(msg, f"({n + 1} problem(s))", "... and 6 more")   # + f/kernel never assigned
    assert len(msg.splitlines()) == 1 + MAX_REPORTED + 1


# ------------------------------------------------------------------------- template expressions

def tabled(i, pattern, template, transform, tables):
    return Rule(i, re.compile(pattern), template, transform, {}, tables=tables)


def test_keras_layer_path_evaluates_index_expressions_and_tables():
    r = tabled(0, r"blocks\.(\d)\.(\d+)\.(fc\d)", "block{first[g1]+g2}_{se[g3]}_s{g1+1}_h{(g2+1)//2}",
               "conv2d", {"first": [1, 2, 4, 7], "se": {"fc1": "reduce", "fc2": "expand"}})
    # blocks.<stage>.<i>: flat block first[stage] + i; hand-computed: 4 + 2, 3 + 1, (2 + 1) // 2
    assert keras_layer_path(r, r.torch.fullmatch("blocks.2.2.fc1")) == "block6_reduce_s3_h1"
    assert keras_layer_path(r, r.torch.fullmatch("blocks.3.0.fc2")) == "block7_expand_s4_h0"
    plain = tabled(1, r"features\.(\d+)\.(\d+)", "stage{g1-6}_block{2}_{g1}", "conv2d", {})
    assert keras_layer_path(plain, plain.torch.fullmatch("features.13.10")) == "stage7_block10_13"


@pytest.mark.parametrize("pattern, template, module, tables, expected", [
    (r"(\w+)\.(\d+)", "b{g1+1}", "fc.3", {}, "group 1 is 'fc', not an integer"),
    (r"(\w+)(\d)?", "b{g2*2}", "fc", {}, "group 2 is None, not an integer"),
    (r"blocks\.(\d+)", "b{first[g1]}", "blocks.4", {"first": [1, 2, 4]},
     "index 4 is outside table 'first' (3 entries)"),
    (r"blocks\.(\d+)", "b{first[g1-1]}", "blocks.0", {"first": [1, 2, 4]},
     "index -1 is outside table 'first'"),          # never counted from the end
    (r"(fc\d)", "x_{se[g1]}", "fc3", {"se": {"fc1": "reduce"}}, "table 'se' has no entry 'fc3'"),
    (r"blocks\.(\d+)", "b{g1//(g1-g1)}", "blocks.2", {}, "division by zero"),
    (r"blocks\.(\d+)", "b{first[g1]}", "blocks.0", {}, "table(s) ['first'] are not given"),
], ids=["not_integer", "unmatched_group", "out_of_range", "negative", "no_key", "zero", "no_table"])
def test_template_evaluation_errors_name_the_rule(pattern, template, module, tables, expected):
    r = tabled(7, pattern, template, "conv2d", tables)
    with pytest.raises(MappingError) as info:
        keras_layer_path(r, r.torch.fullmatch(module))
    contains(str(info.value), "rule #7", repr(template), f"torch module {module!r}", expected)


def test_plan_reports_a_template_failure_with_the_other_problems():
    tm, km = Tiny(), keras_tiny()
    bad = rules(fc=False) + [tabled(5, r"(fc)", "f{g1+1}", "linear", {})]
    msg = mapping_error(tm, km, bad)
    contains(msg, "torch module 'fc'", "rule #5", "group 1 is 'fc', not an integer",
             "keras variable 'f/kernel' (4, 5) is never assigned")
    # a table decides the target: blocks.0 <-> block1 swapped (same shapes, so the plan is clean)
    swapped = rules()[:2] + [tabled(2, r"blocks\.(\d+)", "block{order[g1]}", "conv2d",
                                    {"order": [1, 0]}), rules()[3]]
    plan = {a.torch_key: a.keras_path for a in plan_mapping(state_of(tm), km, swapped, IGNORE)}
    assert plan["blocks.1.bias"] == "block0/bias" and plan["blocks.0.weight"] == "block1/kernel"
