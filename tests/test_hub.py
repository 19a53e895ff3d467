"""Publish converted models, serve the release over real HTTP on 127.0.0.1, download them."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hub_server import HubServer
from release_server import ReleaseServer

import zoo
from helpers import ROOT, run_python, run_script
from zoo import hub
from zoo.publish import build_release, card_metadata

NAME = "timm/resnet18"
WEIGHTS = f"/models/{NAME}/model.weights.h5"
# the release is made of random-weight conversions; test_random_release_entry_warns checks that
pytestmark = pytest.mark.filterwarnings("ignore:.*published weights are RANDOM")


@pytest.fixture(scope="module")
def release(converted, tmp_path_factory):
    out_dir, _ = converted(NAME)
    rel = tmp_path_factory.mktemp("release")
    build_release([converted.root], rel, version="test", allow_random=True)
    return rel


@pytest.fixture
def server(release, monkeypatch, tmp_path):
    with ReleaseServer(release) as srv:
        monkeypatch.setenv("ZOO_WEIGHTS_URL", srv.url)
        monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("ZOO_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "BACKOFF", 0.05)
        yield srv


def _golden(converted):
    out_dir, _ = converted(NAME)
    with np.load(out_dir / "golden.npz") as z:
        return z["input/image"], z["output/logits"]


def _cached_files(tmp_path):
    return sorted(p.relative_to(tmp_path / "cache").as_posix()
                  for p in (tmp_path / "cache").rglob("*") if p.is_file())


# ------------------------------------------------------------------------ publish

def test_publish_refuses_random_unless_allowed_and_is_idempotent(converted, tmp_path):
    converted(NAME)
    rel = tmp_path / "rel"
    proc = run_script("publish.py", "--out", converted.root, "--release", rel)
    assert proc.returncode == 1 and "random weights" in proc.stderr
    assert json.loads((rel / "index.json").read_text())["models"] == {}
    proc = run_script("publish.py", "--out", converted.root, "--release", rel, "--allow-random",
                      "--saved-model", "--version", "1.0")
    assert proc.returncode == 0, proc.stderr
    first = (rel / "index.json").read_bytes()
    card = (rel / "models" / NAME / "README.md").read_text()
    assert "Random weights" in card and "apache-2.0" in card and "max rel error" in card
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "keras"
    assert meta["pipeline_tag"] == "image-classification"
    assert {"keras", "timm", "random-weights"} <= set(meta["tags"])
    assert "base_model" not in meta     # random weights are not derived from timm's
    index = json.loads(first)
    entry = index["models"][NAME]
    assert entry["random"] is True and index["version"] == "1.0"
    assert set(entry["files"]) == {"model.weights.h5", "config.json", "README.md",
                                   "saved_model.tar.gz"}
    for meta in entry["files"].values():
        assert (rel / meta["path"]).stat().st_size == meta["bytes"]
    run_script("publish.py", "--out", converted.root, "--release", rel, "--allow-random",
               "--saved-model", "--version", "1.0")
    assert (rel / "index.json").read_bytes() == first
    # without credentials, --to says so and leaves the local release ready
    proc = run_script("publish.py", "--out", converted.root, "--release", rel, "--allow-random",
                      "--to", "hf://someone/zoo", env={"HF_TOKEN": "", "HF_HOME": str(tmp_path)})
    assert proc.returncode == 0 and "no Hugging Face credentials" in proc.stdout


def test_publish_refuses_failed_or_tampered_models_and_merges_shards(converted, tmp_path):
    src, _ = converted(NAME)
    shard_a, shard_b, shard_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    shutil.copytree(src, shard_a / NAME)
    tv_src, _ = converted("torchvision/resnet18")
    shutil.copytree(tv_src, shard_b / "torchvision/resnet18")
    index, refused = build_release([shard_a, shard_b], tmp_path / "rel", allow_random=True)
    assert set(index["models"]) == {NAME, "torchvision/resnet18"} and not refused

    failed = shard_c / "timm/failed"
    shutil.copytree(src, failed)
    report = json.loads((failed / "report.json").read_text())
    report["status"] = "failed"
    (failed / "report.json").write_text(json.dumps(report))
    tampered = shard_c / "timm/tampered"
    shutil.copytree(src, tampered)
    with open(tampered / "model.weights.h5", "r+b") as f:
        f.seek(5000)
        f.write(b"\x00" * 16)
    _, refused = build_release([shard_c], tmp_path / "rel2", allow_random=True)
    assert "failed validation" in refused["timm/failed"]
    assert "changed since it was validated" in refused["timm/tampered"]


def _front_matter(card: str) -> dict:
    """The YAML between the card's leading '---' lines, as the Hub reads it."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize("name, base", [(NAME, "timm/resnet18.a1_in1k"),
                                        ("torchvision/resnet18", "torchvision/resnet18.IMAGENET1K_V1")])
def test_card_of_pretrained_weights_names_its_base_model(converted, name, base):
    folder, _ = converted(name)
    report = json.loads((folder / "report.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    report["weights"]["source"] = "pretrained"   # as a run with the source's weights records it
    meta = card_metadata(report, config)
    assert meta["base_model"] == base
    assert meta["license"] == {"timm": "apache-2.0", "torchvision": "bsd-3-clause"}[name[:name.index("/")]]
    assert "random-weights" not in meta["tags"]


# ------------------------------------------------------------------------ download

def test_download_in_fresh_cache_predicts_what_was_recorded(server, converted, tmp_path):
    inputs, logits = _golden(converted)
    model = zoo.create_model(NAME, pretrained=True)
    got = model.predict_on_batch(inputs)
    assert np.abs(got - logits).max() / np.abs(logits).max() < 1e-5
    assert f"models/{NAME}/model.weights.h5" in _cached_files(tmp_path)
    # a second call is served from the cache (only the index is refreshed)
    n = len(server.requests)
    zoo.create_model(NAME, pretrained=True)
    assert [p for p, _ in server.requests[n:]] == ["/index.json"]


@pytest.mark.hostile("hostile server or cache")
def test_corrupted_file_is_an_error_and_nothing_is_cached(server, tmp_path):
    server.faults[WEIGHTS] = ["corrupt"]
    with pytest.raises(hub.DownloadError, match="checksum mismatch"):
        hub.fetch(NAME)
    assert not any(f.endswith((".h5", ".part")) for f in _cached_files(tmp_path))


def test_two_server_errors_then_success(server):
    server.faults[WEIGHTS] = ["500", "500"]
    hub.fetch(NAME)
    assert [p for p, _ in server.requests].count(WEIGHTS) == 3


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    server.faults[WEIGHTS] = ["drop"]
    folder = hub.fetch(NAME)
    ranges = [r for p, r in server.requests if p == WEIGHTS]
    assert ranges[0] is None and ranges[1] and ranges[1].startswith("bytes=")
    assert int(ranges[1][len("bytes="):-1]) > 0
    meta = json.loads((tmp_path / "cache" / "index.json").read_text())["models"][NAME]
    assert hub._sha256(folder / "model.weights.h5") == meta["files"]["model.weights.h5"]["sha256"]


def test_offline_with_and_without_cache(server, monkeypatch, converted):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(hub.DownloadError, match="offline .* missing"):
        zoo.create_model(NAME, pretrained=True)
    monkeypatch.delenv("ZOO_OFFLINE")
    hub.fetch(NAME)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    n = len(server.requests)
    inputs, logits = _golden(converted)
    got = zoo.create_model(NAME, pretrained=True).predict_on_batch(inputs)
    assert len(server.requests) == n   # no network at all
    assert np.abs(got - logits).max() / np.abs(logits).max() < 1e-5


def test_two_processes_downloading_at_once(server, tmp_path):
    code = f"from zoo import hub; print(hub.fetch({NAME!r}))"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    files = _cached_files(tmp_path)
    assert not [f for f in files if f.endswith(".part")]
    assert files.count(f"models/{NAME}/model.weights.h5") == 1
    assert [p for p, _ in server.requests].count(WEIGHTS) == 1   # the second waited, then reused


@pytest.mark.hostile("hostile server or cache")
def test_malicious_index_is_refused(server, release, tmp_path):
    evil = tmp_path / "evil_release"
    shutil.copytree(release, evil)
    index = json.loads((evil / "index.json").read_text())
    for bad in ("../../escaped.h5", "/etc/passwd", "models/../../x.h5"):
        index["models"][NAME]["files"]["model.weights.h5"]["path"] = bad
        (evil / "index.json").write_text(json.dumps(index))
        with ReleaseServer(evil) as srv:
            os.environ["ZOO_WEIGHTS_URL"] = srv.url
            with pytest.raises(hub.DownloadError, match="unsafe path"):
                hub.fetch(NAME)
    assert not (tmp_path / "escaped.h5").exists()
    os.environ["ZOO_WEIGHTS_URL"] = server.url
    # a symlink planted inside the cache cannot redirect a write outside it
    (tmp_path / "cache" / "models" / "timm").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "cache" / "models" / "timm" / "resnet18")
    with pytest.raises(hub.DownloadError, match="symbolic link"):
        hub.fetch(NAME)
    assert not any((tmp_path / "outside").iterdir())


@pytest.mark.hostile("hostile server or cache")
def test_only_hf_http_https_file_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ZOO_WEIGHTS_URL", "ftp://example.org/release")
    with pytest.raises(hub.DownloadError, match="only hf, https, http, file"):
        hub.fetch(NAME)
    monkeypatch.setenv("ZOO_WEIGHTS_URL", "hf://org/../repo")
    with pytest.raises(hub.DownloadError, match="expected hf://<org>/<repo>"):
        hub.fetch(NAME)
    # a static release has no revisions: asking for one is an error, not silently ignored
    monkeypatch.setenv("ZOO_WEIGHTS_URL", tmp_path.as_uri())
    with pytest.raises(hub.DownloadError, match="needs an hf:// release"):
        hub.fetch(NAME, revision="v1")


def test_file_url_release_and_download_script(release, tmp_path):
    env = {"ZOO_WEIGHTS_URL": release.as_uri(), "ZOO_CACHE_DIR": str(tmp_path / "c")}
    proc = run_script("download.py", "--all", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c" / "models" / NAME / "model.weights.h5").is_file()
    proc = run_script("download.py", "timm/resnet51", env=env)
    assert proc.returncode == 1 and "did you mean" in proc.stderr


def test_download_and_load_without_torch(server, converted, tmp_path):
    inputs_path = tmp_path / "golden.npz"
    out_dir, _ = converted(NAME)
    shutil.copy(out_dir / "golden.npz", inputs_path)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import numpy as np, zoo\n"
            f"z = np.load({str(inputs_path)!r})\n"
            f"m = zoo.create_model({NAME!r}, pretrained=True)\n"
            "got = m.predict_on_batch(z['input/image'])\n"
            "assert np.abs(got - z['output/logits']).max() / np.abs(z['output/logits']).max() < 1e-5\n"
            "print('OK')\n")
    proc = run_python(code, env={"ZOO_WEIGHTS_URL": server.url,
                                 "ZOO_CACHE_DIR": str(tmp_path / "c2")})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------ hostile servers and caches

@pytest.mark.hostile("hostile server or cache")
def test_planted_part_symlink_is_not_followed(server, tmp_path):
    """A symlink at the download's `.part` path used to make fetch overwrite the file it points
    to, and the cached weights became that symlink."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "cache" / "models" / NAME
    folder.mkdir(parents=True)
    os.symlink(victim, folder / "model.weights.h5.part")
    with pytest.raises(hub.DownloadError, match="symbolic link"):
        hub.fetch(NAME)
    assert victim.read_text() == "precious"
    assert not (folder / "model.weights.h5").exists()


@pytest.mark.hostile("hostile server or cache")
def test_download_stops_at_the_size_the_index_states(server, tmp_path):
    server.faults[WEIGHTS] = ["junk"]
    index = json.loads((server.root / "index.json").read_text())
    size = index["models"][NAME]["files"]["model.weights.h5"]["bytes"]
    with pytest.raises(hub.DownloadError, match=f"more than the {size} bytes"):
        hub.fetch(NAME)
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not [p for p in cached if p.name.startswith("model.weights.h5")]
    assert sum(p.stat().st_size for p in cached) < size    # the junk never reached the disk


@pytest.mark.hostile("hostile server or cache")
@pytest.mark.parametrize("bad, problem", [
    (b"[1, 2, 3]", "expected a JSON object"),
    (b'{"models": {"timm/resnet18": {"files": {"model.weights.h5": {"path": '
     b'"models/timm/resnet18/model.weights.h5", "bytes": 10}}}}}', "sha256 must be"),
    (b'{"models": {"timm/resnet18.x/../../y": {"files": {}}}}', "invalid weight tag"),
    (b'{"models": 7}', "models: expected an object"),
    (b"{not json", "not JSON"),
])
def test_bad_index_never_replaces_the_cached_one(server, tmp_path, bad, problem):
    """A wrong-shaped index used to crash with AttributeError/KeyError and replace the good cached
    index; an unparsable one was silently ignored for a stale cached copy."""
    with pytest.raises(hub.DownloadError, match=problem):   # nothing cached yet: an error
        server.faults["/index.json"] = [bad]
        hub.load_index()
    good = hub.load_index()
    cached = (tmp_path / "cache" / "index.json").read_bytes()
    server.faults["/index.json"] = [bad]
    with pytest.warns(hub.IndexWarning, match=f"using the cached release index.*{problem}"):
        assert hub.load_index() == good
    assert (tmp_path / "cache" / "index.json").read_bytes() == cached


def test_random_release_entry_warns(server):
    with pytest.warns(hub.IndexWarning, match="RANDOM"):
        hub.fetch(NAME)


@pytest.mark.hostile("hostile server or cache")
def test_traversal_in_a_name_is_refused_before_any_request(server, tmp_path):
    n = len(server.requests)
    with pytest.raises(zoo.ZooError, match="invalid weight tag"):
        hub.fetch("timm/resnet18.x/../../../../escaped")
    assert len(server.requests) == n


# ------------------------------------------------------------------------ hf:// releases
# huggingface_hub talks to tests/hub_server.py, a real server on 127.0.0.1 that speaks the Hub's
# resolve protocol. Two commits: OLD (the release, tagged v1) and NEW (main: other weights bytes).

REPO, OLD, NEW = "zoo-test/release", "1" * 40, "2" * 40
TOKEN = "hf_test_token"


def _resolve(commit, rel):
    return f"/{REPO}/resolve/{commit}/{rel}"


def _resolves(server):
    """(method, path) of the requests for repository files (not huggingface_hub's own calls)."""
    return [(m, p) for m, p, _ in server.requests if p.startswith(f"/{REPO}/resolve/")]


@pytest.fixture(scope="module")
def new_release(release, tmp_path_factory):
    """The release with other weights bytes and its index updated to match (hashlib, here)."""
    import hashlib

    new = tmp_path_factory.mktemp("new") / "release"
    shutil.copytree(release, new)
    weights = new / "models" / NAME / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    index = json.loads((new / "index.json").read_text())
    index["models"][NAME]["files"]["model.weights.h5"]["sha256"] = hashlib.sha256(data).hexdigest()
    (new / "index.json").write_text(json.dumps(index))
    return new


@pytest.fixture
def hf_server(release, new_release, monkeypatch, tmp_path):
    """The Hub server with a private repository, and huggingface_hub pointed at it. Its cache and
    token file are read from the environment once, when huggingface_hub is imported (already done
    in this process), so they are set on its constants too (zoo passes HF_ENDPOINT itself)."""
    import huggingface_hub.constants as hf_constants

    with HubServer(REPO, {OLD: release, NEW: new_release}, {"main": NEW, "v1": OLD},
                   token=TOKEN) as srv:
        home = tmp_path / "hf"
        for var, value in {"HF_ENDPOINT": srv.url, "HF_HOME": str(home),
                           "HF_HUB_CACHE": str(home / "hub")}.items():
            monkeypatch.setenv(var, value)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "ZOO_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("ZOO_WEIGHTS_URL", f"hf://{REPO}")
        monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "zoo-cache"))
        yield srv


def _index(folder):
    return json.loads((folder / "index.json").read_text())["models"][NAME]["files"]


def test_hf_token_and_revision_pin(hf_server, release, new_release, monkeypatch, tmp_path):
    with pytest.raises(hub.DownloadError, match="401.*needs a token"):
        hub.fetch(NAME)
    assert {a for _, _, a in hf_server.requests} == {None}   # refused, nothing sent with a token
    # the token as an argument, at tag v1: the old release's bytes
    folder = hub.fetch(NAME, token=TOKEN, revision="v1")
    assert hub._sha256(folder / "model.weights.h5") == _index(release)["model.weights.h5"]["sha256"]
    # HF_TOKEN, main (the default): the new bytes
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = hub.fetch(NAME)
    assert hub._sha256(folder / "model.weights.h5") == _index(new_release)["model.weights.h5"]["sha256"]
    # a commit in ZOO_WEIGHTS_URL pins as a tag does
    monkeypatch.setenv("ZOO_WEIGHTS_URL", f"hf://{REPO}@{OLD}")
    folder = hub.fetch(NAME)
    assert hub._sha256(folder / "model.weights.h5") == _index(release)["model.weights.h5"]["sha256"]
    assert all(a == f"Bearer {TOKEN}" for m, p, a in hf_server.requests[1:] if "/resolve/" in p)
    assert not (tmp_path / "zoo-cache").exists()    # hf:// files live in the Hub's cache only
    # create_model passes token and revision on: it asks for v1, with the token
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("ZOO_WEIGHTS_URL", f"hf://{REPO}")
    n = len(hf_server.requests)
    zoo.create_model(NAME, pretrained=True, token=TOKEN, revision="v1")
    asked = [(p, a) for _, p, a in hf_server.requests[n:] if "/resolve/" in p]
    assert asked and all(p.startswith(_resolve("v1", "")) and a == f"Bearer {TOKEN}"
                         for p, a in asked), asked


def test_hf_cache_is_reused(hf_server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("ZOO_WEIGHTS_URL", f"hf://{REPO}@{OLD}")
    folder = hub.fetch(NAME)
    weights = ("GET", _resolve(OLD, f"models/{NAME}/model.weights.h5"))
    assert weights in _resolves(hf_server)
    n = len(_resolves(hf_server))
    assert hub.fetch(NAME) == folder
    assert _resolves(hf_server)[n:] == []        # pinned to a commit: no request at all
    # at a branch, only the index is asked for (whether main moved); files come from the cache
    monkeypatch.setenv("ZOO_WEIGHTS_URL", f"hf://{REPO}")
    hub.fetch(NAME, revision="v1")
    assert _resolves(hf_server)[n:] == [("HEAD", _resolve("v1", "index.json"))]


def test_hf_offline_with_and_without_cache(hf_server, converted, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.DownloadError, match=r"offline \(HF_HUB_OFFLINE=1\).*not in the Hugging"):
        hub.fetch(NAME, revision="v1")
    assert _resolves(hf_server) == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = hub.fetch(NAME, revision="v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hf_server.requests)
    assert hub.fetch(NAME, revision="v1") == online
    # loaded from the Hub's cache (snapshot links to blobs), offline, as the user would
    monkeypatch.setenv("ZOO_WEIGHTS_URL", f"hf://{REPO}@v1")
    inputs, logits = _golden(converted)
    got = zoo.create_model(NAME, pretrained=True).predict_on_batch(inputs)
    assert len(hf_server.requests) == n
    assert np.abs(got - logits).max() / np.abs(logits).max() < 1e-5


@pytest.mark.hostile("hostile server or cache")
def test_hf_checksum_mismatch_is_refused_and_not_kept(hf_server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = _resolve(OLD, f"models/{NAME}/model.weights.h5")
    hf_server.faults[path] = ["corrupt"]
    with pytest.raises(hub.DownloadError, match="checksum mismatch.*removed from the Hugging"):
        hub.fetch(NAME, revision="v1")
    folder = hub.fetch(NAME, revision="v1")     # downloaded again, not the bad cached bytes
    assert [r for r in _resolves(hf_server) if r == ("GET", path)] == [("GET", path)] * 2
    assert hub._sha256(folder / "model.weights.h5") == _index(hf_server.commits[OLD])[
        "model.weights.h5"]["sha256"]


def test_hf_download_script_with_environment_only(hf_server, release, tmp_path):
    """The user's path: HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE set before Python starts
    (no constants patched), through scripts/download.py."""
    env = {"HF_ENDPOINT": hf_server.url, "HF_HOME": str(tmp_path / "hf-env"), "HF_TOKEN": TOKEN,
           "HF_HUB_CACHE": str(tmp_path / "hf-env" / "hub"), "ZOO_WEIGHTS_URL": f"hf://{REPO}"}
    online = run_script("download.py", NAME, "--revision", "v1", env=env)
    assert online.returncode == 0, online.stderr
    assert str(tmp_path / "hf-env" / "hub") in online.stdout
    n = len(hf_server.requests)
    offline = run_script("download.py", NAME, "--revision", "v1", env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == online.stdout and len(hf_server.requests) == n
