"""The recipe's `features`: Keras stage<i> layers and the torch module with the same output
(zoo.conversion.draft)."""
from __future__ import annotations

import re


def _infer_features(model, pairs, trace, keras_input_shape):
    """[torch module, keras layer] for each keras layer named stage<i>, checked by output shape
    at the traced input (keras_input_shape: NHWC with the traced batch; None: not a single image input): the
    outermost ancestor of the last torch module matched before the stage layer
    that holds nothing matched after it (nor before the previous stage layer); failing that, the
    last module that runs after that torch module and before the next stage's (e.g. the
    parameter-free max-pool that ends a VGG stage)."""
    import keras

    executed, shapes = trace
    names = [lay.name for lay in model.layers]
    stages = sorted((n for n in names if re.fullmatch(r"stage\d+", n)), key=lambda n: int(n[5:]))
    if not stages or not shapes or keras_input_shape is None:
        return [], ("features: TODO (no keras layer named stage<i>, or not a single image "
                    "input)")
    try:
        feat = keras.Model(model.inputs, [model.get_layer(n).output for n in stages])
        specs = feat.compute_output_spec(keras.KerasTensor(keras_input_shape))
        specs = specs if isinstance(specs, (list, tuple)) else [specs]
        kshapes = {n: tuple(s.shape) for n, s in zip(stages, specs)}
    except Exception:  # noqa: BLE001
        return [], "features: TODO (could not compute the keras stage shapes)"
    index = {n: i for i, n in enumerate(names)}

    def fits(path, stage):
        shp = shapes.get(path)
        return shp is not None and len(shp) == 4 and (shp[0], shp[2], shp[3], shp[1]) == kshapes[stage]

    def holds(path, paths):
        return path == "" or any(t == path or t.startswith(path + ".") for t in paths)

    out, missing, previous = [], [], -1
    for n in stages:
        at = index[n]
        seg = [p.torch.path for p in pairs if index.get(p.keras.top, -1) < at]
        later = [p.torch.path for p in pairs if index.get(p.keras.top, -1) > at]
        other = later + [p.torch.path for p in pairs if index.get(p.keras.top, -1) < previous]
        previous = at
        if not seg:
            missing.append(n)
            continue
        last = max(seg, key=lambda t: executed.get(t, -1))
        parts = last.split(".")
        found = next((c for c in (".".join(parts[:d]) for d in range(1, len(parts) + 1))
                      if not holds(c, other) and fits(c, n)), None)
        if found is None and last in executed:
            end = min((executed[t] for t in later if t in executed), default=len(executed))
            after = [t for t, i in executed.items() if executed[last] < i < end
                     and not holds(t, other) and fits(t, n)]
            found = max(after, key=executed.get, default=None)
        if found is None:
            missing.append(n)
        else:
            out.append((found, n))
    note = None
    if missing:
        note = f"features: TODO for {', '.join(missing)} (no torch module with the same output)"
    return out, note

