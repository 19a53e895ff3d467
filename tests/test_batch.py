"""scripts/convert_all.py: worker per model, failures reported and survived, resume, shards."""
import json
import os

import pytest

from helpers import SMALL, run_script, user_recipes_env
from zoo import catalog
from zoo.batch import BatchError, select, summary_table
from zoo.worker_env import ALLOCATOR_ENV, THREAD_VARS

CRASHING_MODULE = '''
import os, signal
def make(**kwargs):
    os.kill(os.getpid(), signal.SIGKILL)   # what the kernel's OOM killer does
'''


@pytest.fixture
def extra_recipes(tmp_path):
    """One variant with a wrong builder (mapping fails) and one whose worker dies."""
    broken = {"torch": {"source": "timm:resnet18"},
              "keras": {"builder": "resnet", "kwargs": {"block": "basic", "depths": [2, 2, 2, 1]}}}
    crash = {"torch": {"source": "python:crashmod:make"}, "keras": broken["keras"]}
    return user_recipes_env(tmp_path, {"test/broken": broken, "test/crash": crash}, "crashmod",
                            CRASHING_MODULE)


def test_batch_survives_failures_and_resumes(tmp_path, extra_recipes):
    out = tmp_path / "out"
    args = ["--only", "timm/resnet18", "torchvision/resnet18", "test/*", "--weights", "random",
            "--input-size", SMALL, "--jobs", 2, "--out", out]
    proc = run_script("convert_all.py", *args, env=extra_recipes)
    assert proc.returncode == 1, proc.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())["models"]
    assert index["timm/resnet18"]["status"] == "passed"
    assert index["torchvision/resnet18"]["status"] == "passed"
    assert index["test/broken"]["status"] == "failed"
    assert "MappingError" in index["test/broken"]["error"]
    assert index["test/crash"]["status"] == "crashed"
    assert "SIGKILL" in index["test/crash"]["error"]
    assert index["timm/resnet18"]["max_rel"] < 1e-5 and index["timm/resnet18"]["top1"] == 1.0
    # memory: ResNet-18 holds 11.69 M parameters and 9,600 BatchNorm statistics in float32 (plus
    # torch's 20 int64 batch counters), once in each framework; the worker's peak is recorded
    row = index["timm/resnet18"]
    assert 2 * 4 * (11_689_512 + 9_600) <= row["parameter_bytes"] <= 2 * 4 * 11_699_112 + 20 * 8, row
    assert 0 < row["rss_mb"] < 3000, row
    assert index["test/crash"].get("rss_mb") is None    # a killed worker reports nothing
    # Nothing half-written: failed models have no folder, no temp folders anywhere.
    assert not (out / "test").exists()
    assert not [p for p in out.rglob(".*") if p.name != ".logs" and ".logs" not in p.parts]
    summary = (out / "SUMMARY.md").read_text()
    assert "| timm/resnet18 | passed | random |" in summary and "test/crash | crashed" in summary
    assert "| model | status | weights | max rel error | top-1 agreement | seconds | peak MiB (limit) |" \
        in proc.stdout
    assert "Peak memory: each worker's peak RSS above its baseline" in summary

    # --resume: complete, unchanged models are skipped; failed ones are retried.
    before = (out / "timm/resnet18/model.weights.h5").stat().st_mtime_ns
    proc = run_script("convert_all.py", *args, "--resume", env=extra_recipes)
    assert proc.returncode == 1
    index = json.loads((out / "index.json").read_text())["models"]
    assert "timm/resnet18 | up to date" in proc.stdout
    assert (out / "timm/resnet18/model.weights.h5").stat().st_mtime_ns == before
    assert index["test/broken"]["status"] == "failed"

    # A different validation resolution is not "up to date".
    proc = run_script("convert_all.py", "--only", "timm/resnet18", "--weights", "random",
                      "--input-size", 32, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "timm/resnet18 | passed" in proc.stdout
    assert json.loads((out / "timm/resnet18/report.json").read_text())["input_size"] == 32

    # validate_all re-checks every model from disk, without torch.
    proc = run_script("validate_all.py", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "2/2 models pass" in proc.stdout


def test_summary_holds_peak_memory_to_its_limit_in_one_unit():
    """Peak RSS is in MiB (ru_maxrss / 1024): the 3x-parameters limit is too. 100 MiB of
    parameters in both models allow 300 MiB: 310 is over it (in MB, 1e6 bytes, the limit would
    read 315 and 310 would pass), 290 within."""
    row = {"status": "passed", "parameter_bytes": 100 * 2**20}
    table = summary_table({"a/over": {**row, "rss_mb": 310.0}, "a/within": {**row, "rss_mb": 290.0}})
    assert "| 310 (300) |" in table and "| 290 (300) |" in table, table
    assert "within it for 1 of 2 models" in table, table


THREADS_MODULE = '''
import json, os
import torch
def record(**kwargs):
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
             "MALLOC_MMAP_THRESHOLD_", "NUMPY_MADVISE_HUGEPAGE")
    with open(os.environ["ZOO_TEST_THREADS_LOG"], "a") as f:
        row = {"torch": torch.get_num_threads(), **{v: os.environ.get(v) for v in names}}
        f.write(json.dumps(row) + "\\n")
    raise RuntimeError("threads recorded")
'''


def test_jobs_share_the_cores_between_workers(tmp_path, monkeypatch):
    """--jobs 2: each worker runs torch and TensorFlow on half the cores (two full-size pools
    oversubscribe them); a thread count the user set explicitly is kept; glibc's mmap threshold
    is fixed (zoo/worker_env.py)."""
    for var in THREAD_VARS + tuple(ALLOCATOR_ENV):
        monkeypatch.delenv(var, raising=False)   # the xdist worker running this test sets them
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "3")
    log = tmp_path / "threads.jsonl"
    record = {"torch": {"source": "python:threadmod:record"},
              "keras": {"builder": "resnet", "kwargs": {"block": "basic", "depths": [1, 1, 1, 1]}}}
    env = user_recipes_env(tmp_path, {"test/threads_a": record, "test/threads_b": record},
                           "threadmod", THREADS_MODULE)
    proc = run_script("convert_all.py", "--only", "test/threads_*", "--weights", "random",
                      "--jobs", 2, "--out", tmp_path / "out", env={**env, "ZOO_TEST_THREADS_LOG": str(log)})
    assert proc.returncode == 1 and "threads recorded" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 2, rows
    for row in rows:
        assert row["torch"] == share, row
        assert row["OMP_NUM_THREADS"] == row["MKL_NUM_THREADS"] == str(share), row
        assert row["TF_NUM_INTRAOP_THREADS"] == str(share) and row["TF_NUM_INTEROP_THREADS"] == "3", row
        assert row["MALLOC_MMAP_THRESHOLD_"] == str(1 << 20), row   # big frees go back to the system
        assert row["NUMPY_MADVISE_HUGEPAGE"] == "0", row            # no compaction stalls


def test_shards_partition_the_catalogue():
    everything = catalog.list_models()
    shards = [select(shard=f"{k}/3") for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == everything
    assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1:])
    assert select(shard="2/3") == shards[1]   # deterministic


def test_bad_batch_arguments():
    with pytest.raises(BatchError, match="K/N"):
        select(shard="3")
    with pytest.raises(BatchError, match="1 <= K <= N"):
        select(shard="4/3")
    with pytest.raises(BatchError, match="no catalogue model"):
        select(only=["timm/nonexistent*"])
    proc = run_script("convert_all.py", "--only", "nope/*")
    assert proc.returncode == 2 and "no catalogue model" in proc.stderr


def test_weights_dir_without_a_checkpoint_is_an_error(tmp_path):
    proc = run_script("convert_all.py", "--only", "timm/resnet18", "--weights", tmp_path,
                      "--out", tmp_path / "out")
    assert proc.returncode == 2 and "no checkpoint for timm/resnet18" in proc.stderr
