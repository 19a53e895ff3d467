"""Weight tags as catalogue names (issue 9, item 3): the tags the recipes declare exist in the
installed timm/torchvision with the source's default first, every listed name resolves, a bare
name resolves to its default tag and says so, an unknown tag is a clear error, a tagged name
converts to its own folder and is published and fetched under that name, and per-tag metadata is
read from the source. Expected values are read from timm/torchvision here, never from zoo."""
import json
import logging
import types

import pytest
import timm
import torchvision
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg

import zoo
from helpers import SMALL
from zoo import catalog, hub
from zoo.conversion import sources
from zoo.errors import SourceError, UnknownModelError

TAGGED = "torchvision/squeezenet1_1.IMAGENET1K_V1"   # a tiny model: the end-to-end case


def declared():
    """[(variant, arch)] of every variant that declares tags."""
    return [(v, v.source.split(":", 1)[1]) for v in catalog.variants().values() if v.tags]


def test_declared_tags_exist_in_the_source_and_the_first_is_its_default():
    checked = 0
    for variant, arch in declared():
        if variant.source_kind == "timm":
            names = timm.list_pretrained(f"{arch}.*")
            known = {n.split(".", 1)[1] for n in names if n.split(".", 1)[0] == arch}
            default = get_pretrained_cfg(arch).tag
        else:
            enum = torchvision.models.get_model_weights(arch)
            known, default = {w.name for w in enum}, enum.DEFAULT.name
        assert set(variant.tags) <= known, (variant.name, set(variant.tags) - known)
        assert variant.tags[0] == default, (variant.name, variant.tags[0], default)
        checked += 1
    # every timm/torchvision variant declares its tags; python: sources cannot
    assert checked == sum(v.source_kind != "python" for v in catalog.variants().values())
    # the examples, each with one more weight set than the default
    assert catalog.variants()["timm/resnet50"].tags[:2] == ("a1_in1k", "tv_in1k")
    assert set(catalog.variants()["torchvision/mobilenet_v2"].tags) == {"IMAGENET1K_V1",
                                                                        "IMAGENET1K_V2"}


def test_listed_names_are_tagged_and_resolve_to_themselves():
    names = zoo.list_models()
    assert "timm/resnet50.a1_in1k" in names and "timm/resnet50.tv_in1k" in names
    assert "timm/resnet50" not in names   # the bare name would convert the default twice
    for name in names:
        variant, tag = catalog.get_variant(name)
        assert catalog.resolve_name(name) == name
        if variant.source.startswith("python:"):   # a wrapped source (SSDlite): no tags of its own
            assert tag is None and name == variant.name and not variant.tags
            continue
        assert tag in variant.tags and name == f"{variant.name}.{tag}"
    assert len(names) == sum(len(v.tags) or 1 for v in catalog.variants().values())
    # pretrained=True without a release: the sources' weight sets, i.e. the same tagged names
    assert zoo.list_models("timm/resnet50.*", pretrained=True) == ["timm/resnet50.a1_in1k",
                                                                   "timm/resnet50.tv_in1k"]


def test_a_bare_name_is_its_default_tag_and_says_which(caplog):
    assert catalog.get_variant("timm/resnet50") == (catalog.variants()["timm/resnet50"], "a1_in1k")
    assert zoo.resolve_name("torchvision/mobilenet_v2") == \
        "torchvision/mobilenet_v2.IMAGENET1K_V2"
    with caplog.at_level(logging.INFO, logger="zoo"):
        zoo.create_model("torchvision/squeezenet1_1", input_shape=(SMALL, SMALL, 3))
    assert "torchvision/squeezenet1_1 resolves to torchvision/squeezenet1_1.IMAGENET1K_V1" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zoo"):
        zoo.create_model(TAGGED, input_shape=(SMALL, SMALL, 3))
    assert "resolves" not in caplog.text   # a tagged name is taken as given


def test_unknown_tag_lists_the_declared_and_the_sources_tags():
    with pytest.raises(UnknownModelError, match="declares a1_in1k, tv_in1k .default a1_in1k"):
        catalog.resolve_name("timm/resnet50.bogus")
    with pytest.raises(UnknownModelError, match="declares a1_in1k, tv_in1k"):
        zoo.create_model("timm/resnet50.bogus")
    # converting asks the source, whose error lists its own tags too (a2_in1k is timm's only)
    with pytest.raises(SourceError, match=r"declares a1_in1k, tv_in1k; timm .* a2_in1k"):
        zoo.convert("timm/resnet50.bogus")
    with pytest.raises(SourceError, match=r"declares IMAGENET1K_V2, IMAGENET1K_V1; torchvision "
                                          r".* has IMAGENET1K_V1, IMAGENET1K_V2"):
        zoo.convert("torchvision/mobilenet_v2.bogus")


def test_timm_metadata_per_tag_comes_from_timm():
    variant = catalog.variants()["timm/resnet50"]
    for tag in variant.tags:
        cfg = get_pretrained_cfg(f"resnet50.{tag}").to_dict()
        pre, license_, _, got_tag = sources._metadata(
            variant, tag, types.SimpleNamespace(pretrained_cfg=cfg), "random")
        data = resolve_data_config({}, pretrained_cfg=cfg)
        assert got_tag == tag and license_ == cfg["license"]
        assert pre["input_size"] == list(data["input_size"][1:])
        assert pre["crop_pct"] == data["crop_pct"] and pre["interpolation"] == data["interpolation"]
        assert pre.get("test_input_size") == (list(cfg["test_input_size"][1:])
                                              if cfg.get("test_input_size") else None)
    # the two weight sets really differ, so per-tag recording matters
    a1 = get_pretrained_cfg("resnet50.a1_in1k")
    assert a1.test_input_size[1:] == (288, 288) and a1.crop_pct != get_pretrained_cfg(
        "resnet50.tv_in1k").crop_pct


def test_torchvision_metadata_and_accuracy_per_tag():
    variant = catalog.variants()["torchvision/mobilenet_v2"]
    for tag in variant.tags:
        weights = torchvision.models.get_model_weights("mobilenet_v2")[tag]
        pre, *_ = sources._metadata(variant, tag, None, "random")
        assert pre["input_size"] == [weights.transforms().crop_size[0]] * 2
        assert pre["resize_size"] == weights.transforms().resize_size[0]
        assert sources.source_metrics(variant, tag) == weights.meta["_metrics"]
    assert sources.source_metrics(catalog.variants()["timm/resnet50"], "a1_in1k") is None


def test_a_tagged_name_converts_publishes_and_downloads_under_its_name(tmp_path, monkeypatch):
    from zoo.publish import build_release

    out = tmp_path / "out"
    _, report = zoo.convert(TAGGED, out_dir=out, input_size=SMALL)
    folder = out / "torchvision" / "squeezenet1_1.IMAGENET1K_V1"
    assert report["output_dir"] == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == TAGGED and config["weights"]["tag"] == "IMAGENET1K_V1"
    assert config["preprocessing"]["input_size"] == [224, 224] and config["input_size"] == SMALL

    index, refused = build_release([out], tmp_path / "release", allow_random=True)
    assert list(index["models"]) == [TAGGED] and not refused
    monkeypatch.setenv("ZOO_WEIGHTS_URL", (tmp_path / "release").as_uri())
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    # with a release: the names it holds
    assert zoo.list_models(pretrained=True) == [TAGGED]
    assert zoo.list_models("timm/*", pretrained=True) == []
    with pytest.warns(hub.IndexWarning, match="RANDOM"):
        fetched = hub.fetch("torchvision/squeezenet1_1")   # the bare name: its default tag
    assert fetched.name == "squeezenet1_1.IMAGENET1K_V1"
    assert json.loads((fetched / "config.json").read_text())["name"] == TAGGED


def test_readme_table_rows_are_tagged_and_keep_rows_from_before_tags():
    from zoo.cli.update_readme import table

    row = {"status": "passed", "weights": "random", "max_rel": 2.5e-6, "top1": 1.0,
           "input_size": 224, "torch_float32_error": 2.7e-6, "tolerance": 1e-4}
    # an index from before weight tags knows the bare name; a tagged row wins over it
    rows = {line.split("`")[1]: line for line in table({"timm/resnet50": row,
                                                        "timm/resnet18.tv_in1k": row}).splitlines()
            if line.startswith("| `")}
    assert list(rows) == zoo.list_models()
    assert "2.5e-06" in rows["timm/resnet50.a1_in1k"]          # the default tag: same weights
    assert "not run" in rows["timm/resnet50.tv_in1k"]          # another weight set: not measured
    assert "2.5e-06" in rows["timm/resnet18.tv_in1k"] and "not run" in rows["timm/resnet18.a1_in1k"]
