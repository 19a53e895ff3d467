"""One conversion: PyTorch source -> Keras model -> mapped weights -> parity -> export -> reload
-> parity again -> report. The Keras model is built once; nothing is written unless it passes."""
from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from zoo import faults
from zoo.arguments import InvalidArgumentError, output_root, positive_int
from zoo.catalog import get_variant, output_dir
from zoo.constants import STAGES  # noqa: F401 - the stages convert() runs; scripts/convert.py counts them
from zoo.conversion.divergence import layer_diff
from zoo.conversion.forward import as_inputs, torch_outputs
from zoo.conversion.geometry import resizes_fixed_input, sized_inputs
from zoo.conversion.mapping import plan_mapping
from zoo.conversion.sources import load_torch_model
from zoo.conversion.torch_first import torch  # noqa: F401 - before keras/tensorflow
from zoo.errors import ExportError, SourceError, ValidationError
from zoo.export import atomic_dir, manifest, parse_formats, parse_inference, save_model_files, write_json
from zoo.io_spec import make_inputs
from zoo.models import build, builder_kwargs
from zoo.validate import (
    RUNNERS,
    KerasProbe,
    compare_outputs,
    compare_outputs_in_parts,
    feed,
    keras_outputs,
    named_outputs,
    per_sample_or_batch,
    sample,
    save_golden,
    validate_files,
)
from zoo.versions import library_versions
from zoo.worker_env import peak_rss_mb

FORMAT_VERSION = 2   # 2: named inputs/outputs in config.json, golden.npz and the report


@contextmanager
def _stage(name, timings, progress, peaks=None):
    """Time a stage (a stage run in two parts adds up; announce only the first to progress).
    peaks: a list to append [stage, this process' peak RSS so far in MiB] to after each part:
    the part whose peak rises most is what sets a conversion's memory."""
    if progress:
        progress(name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)
    if peaks is not None:
        peaks.append([name, peak_rss_mb()])


@contextmanager
def _disk_errors(name, final):
    """A full disk or a file-size limit is the user's to fix: say so in one line (atomic_dir has
    already removed the partial folder when this propagates)."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        # h5py's strerror is a multi-line HDF5 trace; the errno says what happened
        raise ExportError(f"{name}: cannot write {final}: {os.strerror(e.errno)} (disk full or "
                          "file-size limit); nothing was written") from None


def float32_error(module, inputs, feature_modules, ref32, tolerance, in_specs, out_specs,
                  layout=None) -> dict:
    """How far torch's own float32 forward is from a float64 forward of the same weights: the
    precision the network allows at float32. A parity error of that size is the network's
    conditioning, not a conversion mistake (which is orders of magnitude larger).

    The float64 pass runs and is compared one sample at a time, each discarded after its turn:
    for a 520 px segmentation net, the batch's float64 activations and its float64 outputs and
    features (1 GB) were the conversion's peak memory. A model whose outputs are not one row per
    sample is run on the whole batch."""

    inputs, in_specs = as_inputs(inputs, in_specs)
    n = len(next(iter(inputs.values())))

    def per_sample(module64):
        for i in range(n):
            ref64 = torch_outputs(module64, sample(inputs, i),
                                  feature_modules, in_specs, out_specs, np.float64, layout)
            if any(np.ndim(v) == 0 or len(v) != 1 for group in ref64.values()
                   for v in group.values()):
                raise _WholeBatch
            yield ref64, sample(ref32, i)

    try:
        with in_float64(module) as module64:
            try:
                result = compare_outputs_in_parts(per_sample(module64), tolerance, out_specs)
            except _WholeBatch:
                result = compare_outputs(
                    torch_outputs(module64, inputs, feature_modules, in_specs, out_specs,
                                  np.float64, layout), ref32, tolerance, out_specs)
    except Exception as e:   # a custom op without a float64 kernel: report, don't fail
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    result.pop("passed", None)
    return result


@contextmanager
def in_float64(module):
    """`module` itself with its floating parameters and buffers in float64, restored to their
    own dtypes on exit. Converted in place rather than deep-copied: a copy kept the float32
    weights alongside their float64 twin, a third copy of the weights at the worker's peak (issue
    11). float32 -> float64 -> float32 is exact, so the restored weights are bit-identical."""
    dtypes = {name: t.dtype for name, t in _floating(module)}
    try:
        yield module.double()
    finally:
        with torch.no_grad():
            for name, t in _floating(module):
                t.data = t.data.to(dtypes[name])


def _floating(module):
    tensors = list(module.named_parameters(remove_duplicate=False)) + \
        list(module.named_buffers(remove_duplicate=False))
    return [(name, t) for name, t in tensors if t.is_floating_point()]


class _WholeBatch(Exception):
    """An output of the float64 pass is not one row per sample."""


def prepare(name, weights="random", num_classes=None, in_chans=None, *, timings=None,
            progress=None, check_hparams=True, input_size=None):
    """Load the torch model, build the Keras model once, map the weights strictly.
    Returns (variant, torch model, builder kwargs, keras model, mapping plan); the Keras model's
    inputs and outputs carry the names the recipe declares (SignatureError otherwise)."""
    timings = {} if timings is None else timings
    variant, tm, in_chans = _load(name, weights, num_classes, in_chans, timings, progress,
                                  input_size)
    kwargs, model, plan = _build_and_map(name, variant, tm, in_chans, timings, progress,
                                         check_hparams)
    return variant, tm, kwargs, model, plan


def _load(name, weights, num_classes, in_chans, timings, progress, input_size, peaks=None):
    variant, tag = get_variant(name)
    num_classes = positive_int("num_classes", num_classes)
    in_chans = positive_int("in_chans", in_chans)
    with _stage("load_torch", timings, progress, peaks):
        tm = load_torch_model(variant, tag, weights, num_classes, in_chans, input_size)
    return variant, tm, in_chans


def _build_and_map(name, variant, tm, in_chans, timings, progress, check_hparams=True,
                   peaks=None):
    # a fixed image size (BEiT) is the checkpoint's when its geometry differs from the recipe's
    in_specs = sized_inputs(variant.input_specs(in_chans), tm.input_size)
    with _stage("build_keras", timings, progress, peaks):
        kwargs = builder_kwargs(variant.builder, {**variant.builder_kwargs, **tm.builder_overrides},
                                classes=tm.num_classes,
                                input_shape=list(in_specs[0].keras_shape())
                                if len(in_specs) == 1 else None)
        model = build(variant.builder, kwargs)
        named_outputs(model, variant.output_specs())
        feed(model, {s.name: None for s in in_specs})
    with _stage("map_weights", timings, progress, peaks):
        # assigned as they are checked (mapping.plan_mapping): the plan holds only the names
        plan = plan_mapping(tm.state_dict_numpy(), model, variant.rules, variant.recipe.ignore,
                            modules=dict(tm.module.named_modules()), context=name,
                            check_hparams=check_hparams, assign=True)
        faults.point("map_weights")
    return kwargs, model, plan


def _reloaded(name, weights, num_classes, in_chans, input_size, first):
    """The torch model of `first` (a TorchModel whose module was freed) loaded again. The load
    is deterministic: random weights are seeded, pretrained ones come from the library's cache, a
    checkpoint is read again and must hash the same (SourceError otherwise: a layer diff against
    another file would blame layers that are not at fault)."""
    _, tm, _ = _load(name, weights, num_classes, in_chans, {}, None, input_size)
    if first.checkpoint and tm.checkpoint["sha256"] != first.checkpoint["sha256"]:
        raise SourceError(f"{name}: checkpoint {first.checkpoint['path']} changed during the "
                          f"conversion (sha256 {first.checkpoint['sha256'][:12]}... -> "
                          f"{tm.checkpoint['sha256'][:12]}...); convert it again")
    return tm


def parameter_bytes(tm, model) -> dict:
    """Bytes of every tensor each model holds: torch's state_dict, Keras' variables."""
    return {"torch": int(sum(a.nbytes for a in tm.state_dict_numpy().values())),
            "keras": int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize
                             for v in model.weights))}


def _refuse_fixed_size(name, size, in_chans):
    """An image input whose recipe fixes its height and width (weights laid out per patch
    position: MLP-Mixer's token MLP) runs at that size only: another --input-size is refused
    rather than silently validated at the fixed size. The reason is the Keras builder's own
    refusal of that input shape, when it gives one. A timm model whose recipe names the tensor
    that carries its size (BEiT's tables) is rebuilt at the new size instead, as timm does."""
    variant, _ = get_variant(name)
    if resizes_fixed_input(variant):   # rebuilt at that size (sources._resized)
        return
    for spec in variant.input_specs(in_chans):
        hw = tuple(spec.shape[1:]) if spec.layout == "image" else ()
        if hw and None not in hw and hw != (size, size):
            why = "the size its weights are laid out for"
            try:
                build(variant.builder, builder_kwargs(variant.builder, variant.builder_kwargs,
                                                      input_shape=[size, size, spec.shape[0]]))
            except ValueError as e:
                why = str(e)
            raise InvalidArgumentError(
                f"{name}: input_size {size} refused: recipe {variant.recipe.path.name} fixes input "
                f"{spec.name!r} at {hw[0]}x{hw[1]} ({why}); convert it without input_size")


def convert(name: str, weights="random", num_classes: int | None = None,
            in_chans: int | None = None, out_dir=None, input_size: int | None = None,
            progress=None, requested: str | None = None, warnings=(), formats=None,
            inference=None):
    """Convert catalogue model `name`; returns (keras_model, report).

    weights: 'random' (perturbed), 'pretrained', or a checkpoint path. out_dir: output root
    (the model goes to `<out_dir>/<name>/`), or None to convert and validate without writing.
    Raises ValidationError (with .report) if parity fails; MappingError/SourceError otherwise.
    requested/warnings: what the user asked for when it differs from `weights` (batch `auto`) and
    why; both are recorded in the report. formats: the export formats (a comma list or sequence
    out of zoo.constants.FORMATS; default DEFAULT_FORMATS). A format whose converter cannot express
    the model is skipped and the skip recorded (report["exports"][fmt]["skipped"]); a written
    format that fails parity fails the conversion. inference: None, "fold" or "xla" (see
    zoo.constants.INFERENCE_MODES): the serving formats are written from a folded copy
    (zoo.fold), whose parity is measured in memory too (parity["folded"]).
    """
    input_size = positive_int("input_size", input_size)
    if input_size is not None:
        _refuse_fixed_size(name, input_size, in_chans)
    formats = parse_formats("formats", formats)
    inference = parse_inference("inference", inference, formats)
    final = None if out_dir is None else output_dir(output_root("out_dir", out_dir), name)
    timings: dict[str, float] = {}
    peaks: list = []
    variant, tm, in_chans = _load(name, weights, num_classes, in_chans, timings, progress,
                                  input_size, peaks)
    size = input_size or tm.input_size or variant.input_size
    features = dict(variant.features)
    in_specs, out_specs = sized_inputs(variant.input_specs(in_chans), tm.input_size), \
        variant.output_specs()
    layout = variant.recipe.feature_layout
    # The torch side of validation runs before the Keras model exists, and the torch module is
    # freed once the weights are mapped: the worker holds both models only while mapping.
    with _stage("validate", timings, None, peaks):
        inputs = make_inputs(in_specs, size, tm.preprocessing)
        # one sample at a time, as the Keras side: the batch's activations at 520 px are large
        # (LR-ASPP: this stage's peak 629 -> 561 MiB above the baseline)
        ref = per_sample_or_batch(
            lambda batch: torch_outputs(tm.module, batch, features, in_specs, out_specs,
                                        layout=layout), inputs)
        floor = float32_error(tm.module, inputs, features, ref, variant.tolerance, in_specs,
                              out_specs, layout)
    kwargs, model, plan = _build_and_map(name, variant, tm, in_chans, timings, progress,
                                         peaks=peaks)
    params = parameter_bytes(tm, model)
    # The Keras validation sets the peak before export (docs/performance.md); it ran with both
    # models held. Only a parity failure needs the module again, for the layer diff, and loads
    # it again (_reloaded).
    tm.module = None
    with _stage("validate", timings, progress, peaks):
        # run again after export, on the weights read back from the file (validate_files)
        probe = KerasProbe(model, list(features.values()), out_specs)
        parity = {"in_memory": compare_outputs(ref, probe(inputs), variant.tolerance, out_specs)}
        serving, folded = None, None
        if inference:
            from zoo.fold import fold_for_inference, xla_warning

            serving, folded = fold_for_inference(model)
            parity["folded"] = compare_outputs(
                ref, keras_outputs(serving, inputs, list(features.values()), out_specs),
                variant.tolerance, out_specs)

    report = {
        "format_version": FORMAT_VERSION, "name": name, "family": variant.recipe.family,
        "source": variant.source, "recipe": str(variant.recipe.path.name),
        "fingerprint": variant.fingerprint(),
        "weights": {"source": tm.weights, "tag": tm.tag, "checkpoint": tm.checkpoint,
                    "requested": requested or (weights if weights in ("random", "pretrained")
                                               else "checkpoint")},
        "num_classes": tm.num_classes, "in_chans": tm.in_chans, "input_size": size,
        "inputs": {n: list(a.shape[1:]) for n, a in inputs.items()},
        "outputs": [s.name for s in out_specs],
        "tolerance": variant.tolerance, "tensors_mapped": len(plan),
        "versions": library_versions(), "warnings": list(warnings) + tm.warnings, "parity": parity,
        "torch_float32_vs_float64": floor,
        "timings": timings,
        "peak_rss_mb_after_stage": peaks,   # filled in as the stages run, export's included
        # issue 11's memory bound for a conversion is a multiple of these (summary: peak RSS)
        "parameter_bytes": params,
    }
    if inference:
        report["inference"] = {"mode": inference, "folded": folded}
        if inference == "xla" and (slow := xla_warning(serving)):
            report["warnings"].append(slow)
    if not parity["in_memory"]["passed"]:
        report["status"] = "failed"
        try:
            tm = _reloaded(name, weights, num_classes, in_chans, input_size, tm)
        except SourceError as e:
            report["diff"], where = None, f"; no layer diff: {e}"
        else:
            report["diff"] = diff = layer_diff(tm, model, plan, inputs, variant.tolerance,
                                               in_specs, layout=variant.recipe.feature_layout)
            first = diff["first_divergent"]
            where = (f"; first divergent layer: torch {first['torch']!r} -> keras "
                     f"{first['keras']!r} (max rel {first['max_rel']:.2e}); likely: "
                     f"{'; '.join(first['diagnosis'])}" if first else
                     "; every mapped layer agrees: the difference is in unmapped ops after the "
                     "last mapped layer")
        if floor.get("max_rel", 0) >= 0.25 * parity["in_memory"]["max_rel"]:
            where += (f". Note: torch's own float32 output is {floor['max_rel']:.2g} (max rel) from "
                      f"its float64 output on these weights, so the network itself is that "
                      f"imprecise in float32: this is conditioning, not a mapping mistake; the "
                      f"recipe's tolerance may be too tight for it")
        raise ValidationError(f"{name}: parity failed: max relative error "
                              f"{parity['in_memory']['max_rel']:.3g} > tolerance "
                              f"{variant.tolerance:g}{where}", report)
    if inference and not parity["folded"]["passed"]:
        report["status"] = "failed"
        raise ValidationError(f"{name}: the folded inference copy fails parity (max relative "
                              f"error {parity['folded']['max_rel']:.3g}) while the model passes "
                              f"({parity['in_memory']['max_rel']:.3g})", report)
    if out_dir is None:
        report["status"] = "passed"
        return model, report
    config = {
        "format_version": FORMAT_VERSION, "name": name, "family": variant.recipe.family,
        "builder": variant.builder, "builder_kwargs": kwargs, "num_classes": tm.num_classes,
        "input_size": size, "preprocessing": tm.preprocessing, "class_names": tm.class_names,
        "weights": report["weights"], "license": tm.license, "source": variant.source,
        # the source's own published accuracy of these weights (torchvision's weight meta)
        "source_metrics": tm.source_metrics,
        "tolerance": variant.tolerance, "feature_layers": list(features.values()),
        "inputs": [s.to_json() for s in in_specs], "outputs": [s.to_json() for s in out_specs],
    }
    if inference:   # the serving formats hold the folded copy
        config["inference"] = report["inference"]
    with atomic_dir(final) as tmp:
        with _stage("export", timings, progress, peaks), _disk_errors(name, final):
            save_golden(tmp, inputs, ref)
            report["exports"] = exports = save_model_files(
                model, tmp, formats, check=lambda fmt, path: RUNNERS[fmt](path, inputs, out_specs),
                shapes={k: a.shape[1:] for k, a in inputs.items()},
                serving=serving, xla=inference == "xla")
            # what the folder holds: validate_all, --resume and publish follow this list
            config["formats"] = [f for f, e in exports.items() if "skipped" not in e]
            write_json(tmp / "config.json", config)
        with _stage("reload_validate", timings, progress, peaks):
            parity.update(validate_files(tmp, inputs, ref, probe))
        failed = [fmt for fmt, p in parity.items() if not p["passed"]]
        report["status"] = "failed" if failed else "passed"
        if failed:
            raise ValidationError(f"{name}: parity failed after reloading {failed}", report)
        report["files"] = manifest(tmp)
        write_json(tmp / "report.json", report)   # last: its presence marks a complete folder
    report["output_dir"] = str(Path(final))
    return model, report
