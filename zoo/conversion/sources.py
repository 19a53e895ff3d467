"""PyTorch sources: build the model named by a recipe variant and give it weights (random and
perturbed, pretrained through timm's/torchvision's own APIs and caches, or a local checkpoint)."""
from __future__ import annotations

import importlib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from zoo.constants import CHECKPOINT_SUFFIXES
from zoo.conversion.forward import run
from zoo.conversion.geometry import checkpoint_geometry, resizes_fixed_input
from zoo.conversion.torch_first import timm, torch, torchvision
from zoo.errors import SourceError
from zoo.export import sha256_file
from zoo.io_spec import make_inputs
from zoo.recipe import Variant

PERTURB_SEED = 0


@dataclass
class TorchModel:
    module: "torch.nn.Module"
    weights: str                        # random | pretrained | checkpoint
    tag: str | None
    num_classes: int
    in_chans: int | None               # channels of the image input (None: no image input)
    preprocessing: dict
    license: str | None
    class_names: list[str] | None = None
    checkpoint: dict | None = None      # {"path", "sha256"}
    warnings: list[str] = field(default_factory=list)
    # the source's published accuracy of these weights ({"ImageNet-1K": {"acc@1": ...}}), where
    # the library ships it (torchvision's weight meta; timm's wheel has no results tables)
    source_metrics: dict | None = None
    # what a checkpoint's geometry changes in the Keras builder beyond the recipe (a ViT or BEiT
    # fine-tuned at another resolution: {"img_size": 384}; a Swin with other windows: {"window":
    # 12, "img_size": 384}), and the validation size it implies (zoo/conversion/geometry.py)
    builder_overrides: dict = field(default_factory=dict)
    input_size: int | None = None

    def state_dict_numpy(self):
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- building (random weights)

def _timm_create(variant, tag, num_classes, in_chans, pretrained=False, overlay=None, **extra):
    arch = variant.source.split(":", 1)[1]
    kwargs = dict(variant.source_kwargs, **extra)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    try:
        return timm.create_model(f"{arch}.{tag}" if tag else arch, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if "Invalid pretrained tag" in str(e):
            known = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")
                     if n.split(".", 1)[0] == arch]
            raise SourceError(f"timm has no weight tag {tag!r} for {arch}: the recipe declares "
                              f"{_declared(variant)}; timm {timm.__version__} has "
                              f"{', '.join(known) or 'none'}") from None
        if "Unknown model" in str(e):
            raise SourceError(f"timm has no model {arch}: {e}") from None
        raise


def _declared(variant) -> str:
    tags = getattr(variant, "tags", ())   # a SourceSpec (audit, drafting) declares none
    return ", ".join(tags) if tags else "none"


def _tv_weights_enum(variant, tag):
    arch = variant.source.split(":", 1)[1]
    enum = torchvision.models.get_model_weights(arch)
    if tag is None:
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise SourceError(f"torchvision has no weights {tag!r} for {arch}: the recipe declares "
                          f"{_declared(variant)}; torchvision {torchvision.__version__} has "
                          f"{', '.join(w.name for w in enum)}") from None


def _python_callable(variant):
    _, module, attr = variant.source.split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"cannot import {variant.source}: {e}") from None


def _build_random(variant, tag, num_classes, in_chans):
    kind = variant.source_kind
    if kind == "timm":
        return _timm_create(variant, tag, num_classes, in_chans)
    kwargs = dict(variant.source_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if kind == "torchvision":
        if in_chans not in (None, 3):
            raise SourceError(f"torchvision builders take 3-channel input; cannot set "
                              f"in_chans={in_chans} for {variant.name}")
        arch = variant.source.split(":", 1)[1]
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    return _python_callable(variant)(**kwargs)


@dataclass(frozen=True)
class SourceSpec:
    """A PyTorch source without a recipe (audit, recipe drafting): what _build_random needs."""
    source: str
    source_kwargs: dict

    @property
    def name(self):
        return self.source

    @property
    def source_kind(self):
        return self.source.split(":", 1)[0]


def build_source(source: str, kwargs=None, num_classes=None, in_chans=None):
    """Random-init nn.Module from 'timm:<name>' | 'torchvision:<builder>' | 'python:<mod>:<fn>'."""
    from zoo.recipe import SOURCE_KINDS
    if source.split(":", 1)[0] not in SOURCE_KINDS:
        raise SourceError(f"source must be timm:<name>, torchvision:<builder> or "
                          f"python:<module>:<callable>, got {source!r}")
    return _build_random(SourceSpec(source, dict(kwargs or {})), None, num_classes, in_chans)


# ---------------------------------------------------------------- weights

def perturb_(module, seed=PERTURB_SEED, ignore=()):
    """Move every float parameter and buffer away from its initial value (fixed seed), except
    the tensors that the recipe `ignore`s (regexes): those are not converted because they are
    derived from the architecture (Swin V2's `relative_coords_table`), so they must keep the
    values the source derives.

    Fresh init hides mapping bugs: BN stats 0/1 make a swapped mean/var invisible, zero-init last
    BN gammas (timm ResNet) switch residual branches off, constant biases hide transposes.
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name]
            if not t.is_floating_point() or any(p.fullmatch(name) for p in ignore):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
                continue
            std = float(t.std()) if t.numel() > 1 else 0.0
            noise = torch.randn(t.shape, generator=gen)
            t.add_(noise.mul_(0.5 * std if std > 1e-8 else 0.2))   # in place: one temporary, not two


def calibrate_norms_(module, input_size, specs, seed=PERTURB_SEED):
    """Re-derive BatchNorm running stats from the activations they actually see, then jitter them.

    Perturbed weights make activations grow or shrink layer after layer; in deep nets
    (EfficientNet, MobileNetV3) float32 rounding then dominates and parity fails for reasons a
    trained model never has. Stats measured on a random batch keep every BN output at a trained
    model's scale, while staying far from 0/1 so a swapped mean/var is still caught.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and m.running_mean is not None]

    def hook(bn, args):
        x = args[0].detach()
        dims = [d for d in range(x.ndim) if d != 1]
        # one pass in the input's dtype (Welford): a float64 copy of every norm's input was most
        # of this step's memory (issue 11), and the jitter below is far coarser than float32
        var, mean = (t.double() for t in torch.var_mean(x, dims, correction=0))
        jitter_mean = 0.1 * var.sqrt() * torch.randn(mean.shape, generator=gen, dtype=torch.float64)
        jitter_var = 0.75 + 0.5 * torch.rand(var.shape, generator=gen, dtype=torch.float64)
        bn.running_mean.copy_(mean + jitter_mean)
        bn.running_var.copy_(var * jitter_var + bn.eps)

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    was_training = module.training
    try:
        module.eval()
        # noise and smooth image-like inputs (another seed than validation's): filters respond
        # very differently to the two, and stats from noise alone leave smooth inputs unnormalised
        run(module, make_inputs(specs, input_size, {}, seed=seed + 1), specs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)


def _unwrap_state_dict(obj, path):
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SourceError(f"{path}: does not contain a state_dict (a mapping of names to tensors)")
    # Wrappers add a prefix to every key: DataParallel/DDP `module.`, torch.compile `_orig_mod.`
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def check_finite(state: dict, where) -> None:
    """Name the tensors holding NaN/inf before any forward pass: otherwise they surface as a
    parity failure that looks like conditioning or a mapping mistake."""
    bad = sorted(k for k, v in state.items()
                 if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        more = f" ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise SourceError(f"{where}: {len(bad)} tensor(s) contain NaN or inf: "
                          f"{', '.join(bad[:10])}{more}; the weights are broken (diverged training, "
                          f"a bad export?) and cannot be converted")


def read_checkpoint(path) -> dict:
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)[:5]
        raise SourceError(f"checkpoint {path} is a directory; pass the checkpoint file itself"
                          + (f" (it contains {', '.join(inside)})" if inside else
                             f" (it holds no {'/'.join(CHECKPOINT_SUFFIXES)} file)"))
    if not path.is_file():
        raise SourceError(f"checkpoint {path} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise SourceError(f"checkpoint {path}: unsupported suffix {path.suffix!r}; "
                          f"expected one of {CHECKPOINT_SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path))
        else:   # weights_only: a checkpoint must never run code when it is read
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means a corrupt/unsafe file
        raise SourceError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    return _unwrap_state_dict(obj, path)


def _load_checkpoint(module, state, path, variant):
    own = module.state_dict()
    # Tensors the recipe ignores (num_batches_tracked, auxiliary heads) are never converted, so a
    # checkpoint may lack them or carry extra ones.
    ignored = lambda k: any(p.fullmatch(k) for p in variant.recipe.ignore)
    missing = sorted(k for k in set(own) - set(state) if not ignored(k))
    unexpected = sorted(k for k in set(state) - set(own) if not ignored(k))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {path} does not fit {variant.name} ({variant.source}):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:20])}{more}")
        clf = variant.classifier
        if clf and f"{clf}.weight" in state and f"{clf}.weight" in own and \
                state[f"{clf}.weight"].shape[0] != own[f"{clf}.weight"].shape[0]:
            lines.append(f"  the checkpoint's classifier has {state[f'{clf}.weight'].shape[0]} "
                         f"classes: pass --num-classes {state[f'{clf}.weight'].shape[0]}")
        raise SourceError("\n".join(lines))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _timm_cached_file(cfg):
    """Local path of timm pretrained weights already in the Hugging Face cache, or None."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str):
            return hit
    return None


def _pretrained(variant, tag, num_classes, in_chans):
    kind = variant.source_kind
    if kind == "timm":
        cfg = _timm_create(variant, tag, num_classes, in_chans).pretrained_cfg
        cached = _timm_cached_file(cfg)
        if cached:   # load from the cache without a network round-trip
            return _timm_create(variant, tag, num_classes, in_chans, pretrained=True,
                                overlay={"file": cached})
        url = f"https://huggingface.co/{cfg.get('hf_hub_id')}" if cfg.get("hf_hub_id") \
            else cfg.get("url")
        if not url or not _reachable(url):
            raise SourceError(f"pretrained weights for {variant.name}"
                              f"{'.' + tag if tag else ''} are not in the local cache and "
                              f"{urlparse(url).hostname if url else 'their host'} is unreachable")
        return _timm_create(variant, tag, num_classes, in_chans, pretrained=True)
    if kind == "torchvision":
        w = _tv_weights_enum(variant, tag)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(w.url).path).name
        if not cached.exists() and not _reachable(w.url):
            raise SourceError(f"pretrained weights for {variant.name} ({w}) are not in the local "
                              f"cache ({cached}) and {urlparse(w.url).hostname} is unreachable")
        if num_classes not in (None, len(w.meta["categories"])):
            raise SourceError(f"torchvision pretrained {w} has {len(w.meta['categories'])} "
                              f"classes; --num-classes needs a checkpoint or random weights")
        arch = variant.source.split(":", 1)[1]
        try:
            return torchvision.models.get_model(arch, weights=w, **variant.source_kwargs)
        except Exception as e:  # noqa: BLE001
            raise SourceError(f"could not load pretrained {w}: {e}") from None
    raise SourceError(f"{variant.source}: a python: source has no pretrained weights; pass a "
                      f"checkpoint path")


# ---------------------------------------------------------------- metadata

def _metadata(variant, tag, module, weights):
    """(preprocessing, license, class names, tag) of the weight set `tag`, read from the source
    (timm's pretrained_cfg, torchvision's weight enum), never from a copy in the recipe. The
    preprocessing also records the source's own evaluation size for the tag (`input_size`,
    [height, width]) and timm's `test_input_size` when it has one (resnet50.a1_in1k trains at 224,
    is tested at 288); config.json's top-level `input_size` is the size zoo validated at."""
    pre = dict(variant.preprocessing)
    license_ = variant.license
    names = None
    kind = variant.source_kind
    if kind == "timm":
        cfg = getattr(module, "pretrained_cfg", {}) or {}
        for k in ("mean", "std"):
            if cfg.get(k):
                pre[k] = [float(x) for x in cfg[k]]
        for k in ("interpolation", "crop_pct", "crop_mode"):
            if cfg.get(k):
                pre[k] = cfg[k]
        for k in ("input_size", "test_input_size"):   # timm: (channels, height, width)
            if cfg.get(k):
                pre[k] = [int(x) for x in cfg[k][-2:]]
        license_ = cfg.get("license", license_)
        tag = tag or cfg.get("tag")
        if weights == "pretrained":
            from timm.data import ImageNetInfo, infer_imagenet_subset
            subset = infer_imagenet_subset(module)
            if subset:
                names = list(ImageNetInfo(subset).label_descriptions())
    elif kind == "torchvision":
        w = _tv_weights_enum(variant, tag)
        t = w.transforms()
        # segmentation weights (SemanticSegmentation) resize the shorter side and do not crop
        crop = getattr(t, "crop_size", None) or t.resize_size
        pre.update(mean=list(t.mean), std=list(t.std), interpolation=t.interpolation.value,
                   crop_pct=round(crop[0] / t.resize_size[0], 4),
                   # the exact resize (crop_pct is rounded): Inception v3 342, not 299 / 0.8743
                   resize_size=int(t.resize_size[0]),
                   input_size=[int(crop[0])] * 2)
        tag = tag or w.name
        if weights == "pretrained":
            names = list(w.meta["categories"])
    return pre, license_, names, tag


def source_metrics(variant, tag) -> dict | None:
    """The source's own accuracy for the weight set `tag`, as the installed library ships it."""
    if variant.source_kind != "torchvision":
        return None
    metrics = _tv_weights_enum(variant, tag).meta.get("_metrics")
    return {k: dict(v) for k, v in metrics.items()} if metrics else None


def _resized(variant, tag, num_classes, in_chans, module, size):
    """timm's model built for img_size `size`, with `module`'s weights loaded through timm's own
    checkpoint filter (the model file's `checkpoint_filter_fn`), which resizes what is laid out
    per patch position -- BEiT's tables, by resize_rel_pos_bias_table -- exactly as timm does when
    it loads pretrained weights into a model created at another img_size."""
    resized = _timm_create(variant, tag, num_classes, in_chans, img_size=size)
    filter_fn = importlib.import_module(type(module).__module__).checkpoint_filter_fn
    resized.load_state_dict(filter_fn(module.state_dict(), resized))
    return resized


def load_torch_model(variant: Variant, tag: str | None, weights: str,
                     num_classes: int | None = None, in_chans: int | None = None,
                     input_size: int | None = None) -> TorchModel:
    """weights: 'random' (perturbed), 'pretrained', or a checkpoint path. input_size: the size
    asked for; a model whose recipe fixes its size (BEiT) is rebuilt at it (`_resized`)."""
    overrides, size = {}, None
    if weights == "random":
        with torch.random.fork_rng(devices=[]):   # reproducible init, caller's RNG untouched
            torch.manual_seed(PERTURB_SEED)
            module = _build_random(variant, tag, num_classes, in_chans)
        perturb_(module, ignore=variant.recipe.ignore)
        calibrate_norms_(module, variant.input_size, variant.input_specs(in_chans))
        kind, ckpt = "random", None
    elif weights == "pretrained":
        module = _pretrained(variant, tag, num_classes, in_chans)
        kind, ckpt = "pretrained", None
    else:
        path = Path(weights)
        state = read_checkpoint(path)
        module = _build_random(variant, tag, num_classes, in_chans)
        geometry = checkpoint_geometry(module, state, variant)
        if geometry is not None:
            # Both models are built at the checkpoint's grid or window, as timm builds a model
            # created with these kwargs; resampling its tensors down to the recipe's geometry
            # would convert another model than the one fine-tuned.
            module = _timm_create(variant, tag, num_classes, in_chans, **geometry.torch_kwargs)
            overrides, size = geometry.keras_kwargs, geometry.input_size
        _load_checkpoint(module, state, path, variant)
        kind, ckpt = "checkpoint", {"path": str(path.resolve()), "sha256": sha256_file(path)}
        if geometry is not None:   # config.json and --resume read it (zoo/batch.py)
            ckpt["geometry"] = geometry.record()
    if kind != "random":
        check_finite(module.state_dict(), ckpt["path"] if ckpt else f"pretrained {variant.name}")
    resize_note = None
    if input_size is not None and resizes_fixed_input(variant) and \
            input_size != (size or variant.input_size):
        module = _resized(variant, tag, num_classes, in_chans, module, input_size)
        resize_note = (f"{variant.name}: weights laid out for {size or variant.input_size} px "
                       f"resized to {input_size} px by timm's checkpoint filter")
        overrides, size = {**overrides, "img_size": input_size}, input_size
    module.eval()
    pre, license_, names, tag = _metadata(variant, tag, module, kind)
    n_cls = _num_classes(module, variant, num_classes)
    images = [s for s in variant.input_specs(in_chans) if s.layout == "image"]
    chans = images[0].shape[0] if images else None
    warnings = [resize_note] if resize_note else []
    if kind == "random":
        warnings.append(f"{variant.name}: RANDOM weights (perturbed, seed {PERTURB_SEED}): "
                        "the converted model is for parity testing only")
    return TorchModel(module, kind, tag if kind != "checkpoint" else None, n_cls, chans, pre,
                      None if kind == "checkpoint" else license_,   # a user checkpoint: theirs
                      names, ckpt, warnings,
                      source_metrics(variant, tag) if kind == "pretrained" else None,
                      overrides, size)


def _num_classes(module, variant, override):
    if not variant.classifies:   # a detector, a landmark regressor: classes mean nothing
        if override is not None:
            raise SourceError(f"{variant.name}: --num-classes applies to a classification output; "
                              f"the recipe declares none ({[s.name for s in variant.output_specs()]})")
        return None
    if override is not None:
        return override
    n = getattr(module, "num_classes", None)
    if isinstance(n, int):
        return n
    clf = variant.classifier
    sd = module.state_dict()
    if clf and f"{clf}.weight" in sd:
        return int(sd[f"{clf}.weight"].shape[0])
    return int(variant.builder_kwargs.get("classes", 1000))


def pretrained_possible(variant: Variant, tag: str | None) -> bool:
    """Whether `pretrained` can succeed here (weights cached, or their host reachable)."""
    try:
        if variant.source_kind == "timm":
            cfg = _timm_create(variant, tag, None, None).pretrained_cfg
            if _timm_cached_file(cfg):
                return True
            url = f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") \
                else cfg.get("url")
            return bool(url) and _reachable(url)
        if variant.source_kind == "torchvision":
            w = _tv_weights_enum(variant, tag)
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(w.url).path).name
            return cached.exists() or _reachable(w.url)
    except SourceError:
        return False
    return False

