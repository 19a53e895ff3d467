"""A user's fine-tuned checkpoint: trained here for a few steps (real BN statistics), saved as
.pth and .safetensors, converted with --num-classes, parity checked."""
import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import zoo
from helpers import SMALL, run_script


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    x = torch.randn(16, 3, 48, 48) * 0.7 + 0.2
    y = torch.randint(0, 10, (16,))
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = model.state_dict()
    assert state["bn1.running_mean"].abs().sum() > 0   # real, non-default statistics
    d = tmp_path_factory.mktemp("ckpt")
    torch.save(state, d / "finetuned.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "finetuned.safetensors"))
    return d


def test_cli_converts_a_pth_checkpoint_with_num_classes(finetuned, tmp_path):
    proc = run_script("convert.py", "torchvision/resnet18", "--weights", finetuned / "finetuned.pth",
                      "--num-classes", 10, "--input-size", SMALL, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "torchvision/resnet18/report.json").read_text())
    assert report["weights"]["source"] == "checkpoint"
    assert report["weights"]["checkpoint"]["sha256"]
    assert report["num_classes"] == 10
    for fmt, p in report["parity"].items():
        assert p["passed"] and p["max_rel"] < 1e-5, fmt
    config = json.loads((tmp_path / "torchvision/resnet18/config.json").read_text())
    assert config["builder_kwargs"]["classes"] == 10 and config["license"] is None


def test_safetensors_checkpoint_in_process(finetuned):
    model, report = zoo.convert("torchvision/resnet18", finetuned / "finetuned.safetensors",
                                num_classes=10, input_size=SMALL)
    assert model.output_shape == (None, 10)
    assert report["parity"]["in_memory"]["max_rel"] < 1e-5


def test_missing_num_classes_says_which_to_pass(finetuned):
    with pytest.raises(zoo.SourceError, match="--num-classes 10"):
        zoo.convert("torchvision/resnet18", finetuned / "finetuned.pth", input_size=SMALL)


def test_wrong_architecture_lists_missing_and_unexpected_keys(finetuned):
    with pytest.raises(zoo.SourceError) as e:
        zoo.convert("torchvision/resnet50", finetuned / "finetuned.pth", num_classes=10)
    msg = str(e.value)
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatches" in msg


def test_corrupt_and_unsafe_files_are_clear_errors(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(zoo.SourceError, match="cannot read checkpoint"):
        zoo.convert("torchvision/resnet18", bad)
    bad_st = tmp_path / "corrupt.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    with pytest.raises(zoo.SourceError, match="cannot read checkpoint"):
        zoo.convert("torchvision/resnet18", bad_st)
    # A pickle that would construct arbitrary objects is refused (weights_only=True).
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": torch.nn.ReLU()}, evil)
    with pytest.raises(zoo.SourceError, match="cannot read checkpoint"):
        zoo.convert("torchvision/resnet18", evil)
    with pytest.raises(zoo.SourceError, match="does not exist"):
        zoo.convert("torchvision/resnet18", tmp_path / "missing.pth")
    with pytest.raises(zoo.SourceError, match="unsupported suffix"):
        zoo.convert("torchvision/resnet18", bad.with_suffix(".txt").write_text("x") and
                    bad.with_suffix(".txt"))


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    proc = run_script("convert.py", "timm/resnet51", "--out", tmp_path)
    assert proc.returncode == 2
    assert "did you mean" in proc.stderr and "timm/resnet50" in proc.stderr


def test_tensors_the_recipe_ignores_may_be_absent(finetuned, tmp_path):
    # e.g. a checkpoint stripped of num_batches_tracked (the resnet recipe ignores them)
    state = torch.load(finetuned / "finetuned.pth", weights_only=True)
    stripped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(stripped) < len(state)
    torch.save(stripped, tmp_path / "stripped.pth")
    _, report = zoo.convert("torchvision/resnet18", tmp_path / "stripped.pth", num_classes=10,
                            input_size=SMALL)
    assert report["parity"]["in_memory"]["max_rel"] < 1e-5
    # a tensor the recipe does not ignore is still required
    del stripped["layer1.0.bn1.running_var"]
    torch.save(stripped, tmp_path / "broken.pth")
    with pytest.raises(zoo.SourceError, match=r"missing keys \(1\): layer1.0.bn1.running_var"):
        zoo.convert("torchvision/resnet18", tmp_path / "broken.pth", num_classes=10,
                    input_size=SMALL)
