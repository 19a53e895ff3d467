"""Download published, pre-converted weights (Keras side: never imports torch).

A release (see scripts/publish.py) is `index.json` plus `models/<name>/...`, at the location
`ZOO_WEIGHTS_URL` (default `DEFAULT_URL`):

- `hf://<repo_id>[@<revision>]`, a Hugging Face Hub repository: files go through
  `huggingface_hub.hf_hub_download`, so the user's token (`HF_TOKEN`, `huggingface-cli login`, or
  `token=`) opens private and gated repositories, a revision (branch, tag or commit) pins the
  release, the Hub's own cache holds the files (none of ours) and `HF_HUB_OFFLINE=1` uses it
  without a request. The model files are fetched at the commit the index was read from, so a
  release is never mixed across two commits, and each is checked against the index's sha256.
- `https://`, `http://` or `file://`, a static folder: our own client fetches each file into
  `ZOO_CACHE_DIR`, stops at the size the index states, checks its sha256 and moves it into the
  cache atomically; partial downloads resume with HTTP Range, transient errors are retried with
  backoff, and a file lock makes concurrent processes safe.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

import filelock

from zoo.constants import WEIGHTS_FILE
from zoo.errors import ZooError
from zoo.names import InvalidNameError, parse_name

DEFAULT_URL = "hf://zoo-models/keras-zoo"
ALLOWED_SCHEMES = ("hf", "https", "http", "file")
STATIC_SCHEMES = ("https", "http", "file")   # fetched by our own client
RETRIES = 5
BACKOFF = 0.5          # seconds, doubled after each failed attempt
TIMEOUT = 30           # seconds per connection attempt
CHUNK = 1 << 20
REQUIRED_FILES = (WEIGHTS_FILE, "config.json")
MAX_INDEX_BYTES = 64 << 20   # the index names every file's size; nothing bounds the index itself
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(ZooError):
    """A download failed (network, checksum, offline without cache, unsafe index)."""


class IndexWarning(UserWarning):
    """The release index could not be refreshed and the cached copy is used instead, or a
    published entry holds random (parity-test) weights."""


def base_url() -> str:
    url = os.environ.get("ZOO_WEIGHTS_URL", DEFAULT_URL).rstrip("/")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise DownloadError(f"ZOO_WEIGHTS_URL {url!r}: only {', '.join(ALLOWED_SCHEMES)} URLs "
                            "are allowed")
    return url


def cache_dir() -> Path:
    if os.environ.get("ZOO_CACHE_DIR"):
        return Path(os.environ["ZOO_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "zoo"


# ZOO_OFFLINE is ours; HF_HUB_OFFLINE is the Hub's, honoured for every release location so that
# one switch keeps the whole program off the network. Read at each call (huggingface_hub reads
# its own copy once, at import).
OFFLINE_VARIABLES = ("ZOO_OFFLINE", "HF_HUB_OFFLINE")


def _offline_variable() -> str | None:
    """The variable that makes us offline, if any."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def offline() -> bool:
    return _offline_variable() is not None


def safe_relpath(rel: str) -> PurePosixPath:
    """An index path that stays inside the cache: relative, no '..', no backslashes/drive."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise DownloadError(f"unsafe path in index: {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or ":" in p.parts[0]:
        raise DownloadError(f"unsafe path in index: {rel!r} (absolute or '..')")
    return p


def _inside(root: Path, rel: PurePosixPath) -> Path:
    root = root.resolve()
    target = root.joinpath(*rel.parts)
    # Refuse links anywhere on the way: a planted symlink could redirect the write.
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise DownloadError(f"refusing to write through symbolic link {cur}")
    if os.path.commonpath([root, target.resolve()]) != str(root):
        raise DownloadError(f"index path {rel} escapes the cache {root}")
    return target


def _open_nofollow(path: Path, append: bool):
    """Open for writing without following a symbolic link planted at `path` (which would
    redirect the write to the file it points to)."""
    if path.is_symlink():
        raise DownloadError(f"refusing to write through symbolic link {path}")
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | \
        (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.fdopen(os.open(path, flags, 0o644), "ab" if append else "wb")
    except OSError as e:   # ELOOP: a link appeared between the check and the open
        raise DownloadError(f"cannot write {path}: {e}") from None


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive inter-process lock (filelock: flock on POSIX, LockFileEx on Windows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():   # older filelock releases open the lock file following links
        raise DownloadError(f"refusing to lock through symbolic link {path}")
    with filelock.FileLock(str(path)):
        yield


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _transient(e: Exception) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    # IncompleteRead & co: the connection dropped mid-file; the next attempt resumes with Range.
    return isinstance(e, (urllib.error.URLError, http.client.HTTPException, OSError))


def _fetch(url: str, dest: Path, expected_size: int | None = None, progress_desc=None,
           max_bytes: int | None = None) -> None:
    """Download url to dest (resuming an existing partial dest), retrying transient errors.

    Never writes more than `expected_size` (the index's size of the file) or `max_bytes`: a
    server that sends more is refused before the excess reaches the disk."""
    from tqdm import tqdm

    if urllib.parse.urlparse(url).scheme not in STATIC_SCHEMES:
        raise DownloadError(f"refusing URL {url!r}: only {', '.join(STATIC_SCHEMES)}")
    limit = expected_size if expected_size is not None else max_bytes
    delay, last = BACKOFF, None
    for attempt in range(1, RETRIES + 1):
        have = dest.stat().st_size if dest.exists() else 0
        if expected_size is not None and have >= expected_size and have > 0:
            return
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                status = getattr(resp, "status", 200)
                if have and status != 206:   # server ignored Range: start over
                    have = 0
                total = expected_size or (have + int(resp.headers.get("Content-Length") or 0)) or None
                with _open_nofollow(dest, append=bool(have)) as f, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True,
                             desc=progress_desc or dest.name, leave=False,
                             disable=None) as bar:
                    for chunk in iter(lambda: resp.read(CHUNK), b""):
                        if limit is not None and have + len(chunk) > limit:
                            f.close()
                            dest.unlink(missing_ok=True)
                            raise DownloadError(f"{url}: the server sent more than the "
                                                f"{limit} bytes expected; download refused")
                        f.write(chunk)
                        have += len(chunk)
                        bar.update(len(chunk))
            size = dest.stat().st_size
            if expected_size is not None and size < expected_size:
                raise ConnectionError(f"connection closed after {size} of {expected_size} bytes")
            return
        except DownloadError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            last = e
            if not _transient(e) or attempt == RETRIES:
                break
            time.sleep(delay)
            delay *= 2
    raise DownloadError(f"could not download {url}: {type(last).__name__}: {last}")


def validate_index(data) -> dict:
    """The release index's schema, checked before the index is used or cached: every model name
    safe, every file with a safe relative path, a sha256 and a size (which bounds its download)."""
    def bad(where, what):
        raise DownloadError(f"invalid release index: {where}: {what}")

    if not isinstance(data, dict):
        bad("top level", f"expected a JSON object, got {type(data).__name__}")
    models = data.get("models")
    if not isinstance(models, dict):
        bad("models", "expected an object of model name -> entry")
    for name, entry in models.items():
        try:
            parse_name(name)
        except InvalidNameError as e:
            bad(f"model {name!r}", str(e))
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            bad(f"model {name!r}", "expected an object with a 'files' object")
        if not isinstance(entry.get("random", False), bool):
            bad(f"model {name!r}.random", "expected true or false")
        for fname, meta in entry["files"].items():
            where = f"model {name!r} file {fname!r}"
            if not isinstance(meta, dict):
                bad(where, "expected an object with path, sha256 and bytes")
            safe_relpath(meta.get("path"))
            if not (isinstance(meta.get("sha256"), str) and _SHA256.fullmatch(meta["sha256"])):
                bad(where, f"sha256 must be 64 lowercase hex digits, got {meta.get('sha256')!r}")
            size = meta.get("bytes")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                bad(where, f"bytes must be a whole number >= 0, got {size!r}")
    return data


def _read_index(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DownloadError(f"invalid release index: not JSON: {e}") from None
    return validate_index(data)


def load_index(refresh: bool = True, *, token: str | None = None,
               revision: str | None = None) -> dict:
    """The release index, validated. hf://: through the Hub's cache (`refresh=False` or offline:
    the cached copy only). Static releases: fetched, validated, then cached; the cached copy
    offline or (with an IndexWarning that says why) when the fresh one cannot be had. A fetched
    index that fails validation never replaces the cached one."""
    hf = _hf_location(base_url(), revision)
    if hf is not None:
        return _hf_index(*hf, token, local_only=offline() or not refresh)[0]
    import warnings

    cached = cache_dir() / "index.json"
    if not offline() and refresh:
        tmp = cached.with_name(f".index.json.{os.getpid()}.part")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            _fetch(f"{base_url()}/index.json", tmp, progress_desc="index.json",
                   max_bytes=MAX_INDEX_BYTES)
            fresh = _read_index(tmp)
            os.replace(tmp, cached)
            return fresh          # validated already: no second read of the cached copy
        except DownloadError as e:
            tmp.unlink(missing_ok=True)
            if not cached.exists():
                raise DownloadError(f"cannot get the weights index from {base_url()}: {e}") from None
            warnings.warn(f"using the cached release index {cached}: the index at {base_url()} "
                          f"could not be used ({e})", IndexWarning, stacklevel=2)
    if not cached.exists():
        raise DownloadError(f"{_offline_label()} and no cached weights index at {cached}")
    try:
        return _read_index(cached)
    except DownloadError as e:
        raise DownloadError(f"cached index {cached} is unusable ({e}); delete it and retry") \
            from None


def _offline_label() -> str:
    var = _offline_variable()
    return f"offline ({var}={os.environ[var]})" if var else "not refreshed"


def _model_entry(index: dict, name: str) -> dict:
    models = index.get("models", {})
    name = next((n for n in _same_weights(name) if n in models), name)
    if name not in models:
        import difflib
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
        raise DownloadError(f"{name!r} is not in the published release"
                            + (f"; did you mean {', '.join(close)}?" if close else ""))
    entry = models[name]
    if entry.get("random"):
        import warnings
        warnings.warn(f"{name}: the published weights are RANDOM (converted for parity testing "
                      "only); its predictions are meaningless", IndexWarning, stacklevel=3)
    return entry


def _requested(entry: dict, name: str, files):
    """(file name, index metadata, safe relative path) for each requested file; the files of a
    model must share one folder (that folder is what `fetch` returns)."""
    if not files:
        raise DownloadError(f"no files requested for {name}")
    found = []
    for fname in files:
        meta = entry.get("files", {}).get(fname)
        if meta is None:
            raise DownloadError(f"the release has no {fname} for {name}")
        found.append((fname, meta, safe_relpath(meta["path"])))
    if len({rel.parent for _, _, rel in found}) != 1:
        raise DownloadError(f"index entry for {name}: all files must share one folder")
    return found


def fetch(name: str, files=REQUIRED_FILES, *, token: str | None = None,
          revision: str | None = None) -> Path:
    """Make sure `name`'s files are downloaded and match the release index; returns the model's
    folder (in our cache, or in the Hub's for hf://), which
    `zoo.create_model(name, pretrained=<folder>)` can load.

    `token` and `revision` apply to hf:// releases (by default huggingface_hub's token and the
    revision in ZOO_WEIGHTS_URL, else `main`). Releases are keyed by tagged names; a bare
    catalogue name fetches its default tag (`timm/resnet50` -> `timm/resnet50.a1_in1k`), and
    either finds an entry published under the other (`_same_weights`)."""
    parse_name(name)
    hf = _hf_location(base_url(), revision)
    if hf is not None:
        return _fetch_hf(name, files, *hf, token)
    root = cache_dir()
    if offline():
        for alias in reversed(_same_weights(name)):   # the error names the first (tagged) one
            folder = _inside(root, safe_relpath(f"models/{alias}"))
            missing = [f for f in files if not (folder / f).is_file()]
            if not missing:
                return folder
        raise DownloadError(f"{_offline_label()} and {alias} is not fully cached: "
                            f"missing {', '.join(str(folder / f) for f in missing)}")
    entry = _model_entry(load_index(), name)
    for fname, meta, rel in _requested(entry, name, files):
        target = _inside(root, rel)
        with _lock(root / "locks" / (hashlib.sha1(str(rel).encode()).hexdigest() + ".lock")):
            if target.is_file() and _sha256(target) == meta["sha256"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            url = f"{base_url()}/{urllib.parse.quote(str(rel))}"
            _fetch(url, part, meta["bytes"], progress_desc=f"{name}/{fname}")
            digest = _sha256(part)
            if digest != meta["sha256"]:
                part.unlink(missing_ok=True)
                raise DownloadError(f"checksum mismatch for {url}: got {digest}, index says "
                                    f"{meta['sha256']} (file deleted)")
            os.replace(part, target)
    return target.parent


def _same_weights(name: str) -> list[str]:
    """The release names of `name`'s weight set: a catalogue variant's default tag and its bare
    name are one set (`timm/resnet50.a1_in1k`, `timm/resnet50`: a model converted under the bare
    name, or published before weight tags), the tagged name first; any other name alone."""
    from zoo import catalog
    from zoo.errors import UnknownModelError

    base, tag = parse_name(name)
    try:
        default = catalog.get_variant(base)[0].default_tag
    except UnknownModelError:   # a user's model, known to the release only
        return [name]
    return [f"{base}.{default}", base] if default and tag in (None, default) else [name]


# ------------------------------------------------------------------------ hf:// releases

def _hf_location(url: str, revision: str | None) -> tuple[str, str | None] | None:
    """'hf://org/repo@rev' -> ('org/repo', 'rev'), `revision` overriding the URL's; None for a
    static release (which has no revisions: asking for one is an error, not ignored)."""
    if not url.startswith("hf://"):
        if revision is not None:
            raise DownloadError(f"revision={revision!r} needs an hf:// release; ZOO_WEIGHTS_URL "
                                f"is {url}")
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo, _, url_revision = url[len("hf://"):].partition("@")
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise DownloadError(f"ZOO_WEIGHTS_URL {url!r}: expected hf://<org>/<repo>[@<revision>] "
                            f"({e})") from None
    return repo, revision or url_revision or None


def _hf_download(repo: str, filename: str, revision: str | None, token, local_only: bool) -> Path:
    """One file through huggingface_hub (its cache, token, offline mode); DownloadError if not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"hf://{repo}{'@' + revision if revision else ''}/{filename}"
    # huggingface_hub reads HF_ENDPOINT once, when first imported (timm imports it early):
    # passing it makes a mirror set later in the process count too
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, token=token,
                                    local_files_only=local_only, endpoint=endpoint))
    except LocalEntryNotFoundError as e:
        if local_only:
            raise DownloadError(f"{_offline_label()} and {where} is not in the Hugging Face "
                                "cache") from None
        raise DownloadError(f"cannot download {where}, and it is not in the Hugging Face cache: "
                            f"{_first_line(e)}") from None
    except (OSError, ValueError) as e:   # HfHubHTTPError (401/403/404/5xx) is an OSError
        # the Hub answers 401 for a private repository as for a missing one
        hint = ("; a private or gated repository needs a token: HF_TOKEN, `huggingface-cli "
                "login` or token=" if isinstance(e, RepositoryNotFoundError) else "")
        raise DownloadError(f"cannot download {where}: {type(e).__name__}: {_first_line(e)}"
                            f"{hint}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _hf_index(repo: str, revision: str | None, token, local_only: bool) -> tuple[dict, str | None]:
    """(index, commit it was read at). The commit comes from the Hub cache's layout
    (`snapshots/<commit>/index.json`), so a branch moving between two requests cannot give us
    the files of another release than the index describes."""
    path = _hf_download(repo, "index.json", revision, token, local_only)
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise DownloadError(f"invalid release index: hf://{repo} index.json is larger than "
                            f"{MAX_INDEX_BYTES} bytes")
    index = _read_index(path)
    snapshot = path.parent
    return index, (snapshot.name if snapshot.parent.name == "snapshots" else revision)


def _fetch_hf(name: str, files, repo: str, revision: str | None, token) -> Path:
    local_only = offline()
    index, commit = _hf_index(repo, revision, token, local_only)
    entry = _model_entry(index, name)
    for _, meta, rel in _requested(entry, name, files):
        path = _hf_download(repo, rel.as_posix(), commit, token, local_only)
        _check_hub_file(path, meta, f"hf://{repo}@{commit}/{rel}")
    return path.parent


def _check_hub_file(path: Path, meta: dict, where: str) -> None:
    """The Hub's client checks only the size the server states: compare with the index. A file
    that does not match is removed from the Hub cache (its snapshot link and the blob behind it),
    so that the next attempt downloads it again instead of failing on the same bytes."""
    size, digest = path.stat().st_size, _sha256(path)
    if size == meta["bytes"] and digest == meta["sha256"]:
        return
    blob = path.resolve()
    path.unlink(missing_ok=True)
    # only a blob of this repository's cache folder (snapshots/<commit>/... -> ../blobs/<etag>)
    if blob != path and blob.parent.name == "blobs" and blob.parent.parent in path.parents:
        blob.unlink(missing_ok=True)
    raise DownloadError(f"checksum mismatch for {where}: got {digest} ({size} bytes), the index "
                        f"says {meta['sha256']} ({meta['bytes']} bytes); removed from the Hugging "
                        "Face cache")


def clear_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)
