"""Fault injection: real `convert_all.py` / `publish.py` processes killed (SIGKILL) at named points
(zoo/faults.py), workers that abort, segfault, run out of memory, hang or fill the disk. After
each: nothing incomplete looks complete, no debris, the index agrees with the disk, and a
`--resume` run finishes the job."""
import json
import signal

import pytest

from helpers import run_script, user_recipes_env

NAME = "timm/resnet18"
SIZE = 32   # the smallest input every stage of ResNet-18 still sees (1x1 at stage 4)
pytestmark = pytest.mark.hostile("fault injection")


def batch(out, *extra, kill_at=None, env=None, size=SIZE, only=(NAME,)):
    e = dict(env or {})
    if kill_at:
        e["ZOO_KILL_AT"] = kill_at
    return run_script("convert_all.py", "--only", *only, "--weights", "random", "--input-size",
                      size, "--out", out, *extra, env=e)


def debris(out):
    """Hidden work folders/files of writers, batch job folders, temp files: none may survive."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*")
                  if p.name != ".logs" and ".logs" not in p.relative_to(out).parts)


def index(out):
    return json.loads((out / "index.json").read_text())["models"]


def assert_consistent(out, passed):
    """Every model listed as passed is complete and re-validates from disk; no debris."""
    assert debris(out) == []
    assert sorted(n for n, r in index(out).items() if r["status"] in ("passed", "up to date")) \
        == sorted(passed)
    proc = run_script("validate_all.py", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert f"{len(passed)}/{len(passed)} models pass" in proc.stdout


def test_worker_killed_inside_each_stage_then_resume(tmp_path):
    out = tmp_path / "out"
    three = ("--formats", "weights.h5,keras,saved_model")   # SavedModel is opt-in
    for point in ("map_weights", "export:weights.h5", "export:keras", "export:saved_model"):
        proc = batch(out, "--resume", *three, kill_at=point)
        assert proc.returncode == 1, point
        row = index(out)[NAME]
        assert row["status"] == "crashed" and "SIGKILL" in row["error"], point
        assert not (out / NAME).exists(), point   # nothing half-written looks like a model
        assert debris(out) == [], point           # the parent removed the dead worker's folder
    proc = batch(out, "--resume", *three)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_consistent(out, [NAME])


def test_killed_between_the_two_renames_of_a_reconversion(tmp_path):
    out = tmp_path / "out"
    assert batch(out).returncode == 0
    # re-conversion at another size; the worker dies with the old folder moved aside and the
    # new, validated one not yet in place: the model used to vanish while index.json listed it
    proc = batch(out, kill_at="between_renames", size=SIZE + 16)
    assert proc.returncode == 1 and index(out)[NAME]["status"] == "crashed"
    report = json.loads((out / NAME / "report.json").read_text())
    assert report["input_size"] == SIZE + 16   # the validated new folder was put in place
    assert debris(out) == []
    proc = batch(out, "--resume", size=SIZE + 16)
    assert proc.returncode == 0 and f"{NAME} | up to date" in proc.stdout, proc.stderr[-2000:]
    assert_consistent(out, [NAME])


def test_batch_killed_while_writing_the_index_then_resume(tmp_path):
    out = tmp_path / "out"
    proc = batch(out, kill_at="index_write")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "index.json").exists()
    assert (out / NAME / "report.json").is_file()
    # what a SIGKILLed batch leaves when it dies earlier (a job folder; a temp file of write_json)
    (out / ".batch-999999999-abcd1234").mkdir()
    (out / ".batch-999999999-abcd1234" / "x.job.json").write_text("{}")
    (out / ".index.json.999999999-0123abcd.tmp").write_text("{")
    proc = batch(out, "--resume")
    assert proc.returncode == 0 and f"{NAME} | up to date" in proc.stdout, proc.stderr[-2000:]
    assert_consistent(out, [NAME])


def test_resume_reconverts_a_truncated_weights_file(tmp_path):
    out = tmp_path / "out"
    assert batch(out).returncode == 0
    weights = out / NAME / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = batch(out, "--resume")
    assert proc.returncode == 0 and f"{NAME} | passed" in proc.stdout, proc.stdout
    assert_consistent(out, [NAME])


# ------------------------------------------------------------------ workers that die or hang

FAULTY_MODULE = '''
import ctypes, os, resource, signal, time
import torchvision

def abort(**kw):
    os.abort()

def segfault(**kw):
    ctypes.string_at(0)

def out_of_memory(**kw):
    # a memory limit 1 GiB above what the worker already uses, then a 4 GiB allocation
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
    return bytearray(4 << 30)

def hang(**kw):
    time.sleep(3600)

def small_disk(**kw):
    # files above 1 MiB cannot be written (EFBIG instead of SIGXFSZ): a full disk, as far as
    # the export is concerned; the model itself is a real ResNet-18
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    return torchvision.models.resnet18(**kw)
'''


@pytest.fixture
def faulty(tmp_path):
    keras = {"builder": "resnet", "kwargs": {"block": "basic", "depths": [2, 2, 2, 2]}}
    return user_recipes_env(tmp_path, {
        f"fault/{f}": {"torch": {"source": f"python:faultymod:{f}"}, "keras": keras}
        for f in ("abort", "segfault", "out_of_memory", "hang", "small_disk")},
        "faultymod", FAULTY_MODULE)


def test_failing_workers_are_reported_and_the_rest_complete(tmp_path, faulty):
    out = tmp_path / "out"
    proc = batch(out, "--jobs", 2, env=faulty,
                 only=(NAME, "fault/abort", "fault/segfault", "fault/out_of_memory",
                       "fault/small_disk"))
    assert proc.returncode == 1
    rows = index(out)
    assert rows[NAME]["status"] == "passed"
    assert rows["fault/abort"]["status"] == "crashed" and "SIGABRT" in rows["fault/abort"]["error"]
    assert rows["fault/segfault"]["status"] == "crashed" and \
        "SIGSEGV" in rows["fault/segfault"]["error"]
    assert rows["fault/out_of_memory"]["status"] == "failed" and \
        "MemoryError" in rows["fault/out_of_memory"]["error"]
    disk = rows["fault/small_disk"]
    assert disk["status"] == "failed" and "ExportError" in disk["error"] and \
        "File too large (disk full or file-size limit); nothing was written" in disk["error"]
    assert not (out / "fault").exists()
    assert_consistent(out, [NAME])


def test_timeout_fails_the_model_and_the_batch_goes_on(tmp_path, faulty):
    out = tmp_path / "out"
    proc = batch(out, "--timeout", 20, env=faulty, only=("fault/hang",))
    assert proc.returncode == 1
    row = index(out)["fault/hang"]
    assert row["status"] == "timed out" and "timed out after 20 s (--timeout)" in row["error"]
    assert debris(out) == []


# ------------------------------------------------------------------ publish

def test_publish_interrupted_then_rerun_gives_the_same_release(converted, tmp_path):
    converted(NAME)
    args = ["--out", converted.root, "--allow-random", "--version", "t"]
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    assert run_script("publish.py", *args, "--release", clean).returncode == 0
    proc = run_script("publish.py", *args, "--release", broken, env={"ZOO_KILL_AT": "publish"})
    assert proc.returncode == -signal.SIGKILL
    assert list((broken / "models").rglob("model.weights.h5"))
    assert not (broken / "index.json").exists()   # never visible ahead of its files
    assert run_script("publish.py", *args, "--release", broken).returncode == 0

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file()}
    assert files(broken) == files(clean)
