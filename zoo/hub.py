"""Download published, pre-converted weights (Keras side: never imports torch).

A release is a static folder (see scripts/publish.py): `index.json` plus `models/<name>/...`.
Files are fetched from `ZOO_WEIGHTS_URL` (default `DEFAULT_URL`), verified against the index's
sha256, and moved into the cache atomically; partial downloads resume with HTTP Range, transient
errors are retried with backoff, and a file lock makes concurrent processes safe.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from zoo.errors import ZooError

DEFAULT_URL = "https://huggingface.co/zoo-models/keras-zoo/resolve/main"
ALLOWED_SCHEMES = ("https", "http", "file")
RETRIES = 5
BACKOFF = 0.5          # seconds, doubled after each failed attempt
TIMEOUT = 30           # seconds per connection attempt
CHUNK = 1 << 20
REQUIRED_FILES = ("model.weights.h5", "config.json")


class DownloadError(ZooError):
    """A download failed (network, checksum, offline without cache, unsafe index)."""


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


def offline() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").lower() in ("1", "true", "yes")


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


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def _fetch(url: str, dest: Path, expected_size: int | None = None, progress_desc=None) -> None:
    """Download url to dest (resuming an existing partial dest), retrying transient errors."""
    from tqdm import tqdm

    if urllib.parse.urlparse(url).scheme not in ALLOWED_SCHEMES:
        raise DownloadError(f"refusing URL {url!r}: only {', '.join(ALLOWED_SCHEMES)}")
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
                with open(dest, "ab" if have else "wb") as f, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True,
                             desc=progress_desc or dest.name, leave=False,
                             disable=None) as bar:
                    for chunk in iter(lambda: resp.read(CHUNK), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            size = dest.stat().st_size
            if expected_size is not None and size < expected_size:
                raise ConnectionError(f"connection closed after {size} of {expected_size} bytes")
            return
        except Exception as e:  # noqa: BLE001 - classified below
            last = e
            if not _transient(e) or attempt == RETRIES:
                break
            time.sleep(delay)
            delay *= 2
    raise DownloadError(f"could not download {url}: {type(last).__name__}: {last}")


def load_index(refresh: bool = True) -> dict:
    """The release index: fetched from the base URL (and cached), or the cached copy offline."""
    cached = cache_dir() / "index.json"
    if not offline() and refresh:
        tmp = cached.with_name(f".index.json.{os.getpid()}.part")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            _fetch(f"{base_url()}/index.json", tmp, progress_desc="index.json")
            json.loads(tmp.read_text())
            os.replace(tmp, cached)
        except (DownloadError, ValueError) as e:
            tmp.unlink(missing_ok=True)
            if not cached.exists():
                raise DownloadError(f"cannot get the weights index from {base_url()}: {e}") from None
    if not cached.exists():
        raise DownloadError(f"offline (ZOO_OFFLINE=1) and no cached weights index at {cached}")
    try:
        return json.loads(cached.read_text())
    except ValueError:
        raise DownloadError(f"cached index {cached} is corrupt; delete it and retry") from None


def _model_entry(index: dict, name: str) -> dict:
    models = index.get("models", {})
    if name not in models:
        import difflib
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
        raise DownloadError(f"{name!r} is not in the published release"
                            + (f"; did you mean {', '.join(close)}?" if close else ""))
    return models[name]


def fetch(name: str, files=REQUIRED_FILES) -> Path:
    """Make sure `name`'s files are in the cache (downloading what is missing); returns the
    model's cache folder, which `zoo.create_model(name, pretrained=<folder>)` can load."""
    root = cache_dir()
    if offline():
        folder = _inside(root, safe_relpath(f"models/{name}"))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DownloadError(f"offline (ZOO_OFFLINE=1) and {name} is not fully cached: "
                                f"missing {', '.join(str(folder / f) for f in missing)}")
        return folder
    entry = _model_entry(load_index(), name)
    folder = None
    for fname in files:
        meta = entry.get("files", {}).get(fname)
        if meta is None:
            raise DownloadError(f"the release has no {fname} for {name}")
        rel = safe_relpath(meta["path"])
        target = _inside(root, rel)
        if folder is not None and target.parent != folder:
            raise DownloadError(f"index entry for {name}: all files must share one folder")
        folder = target.parent
        with _lock(root / "locks" / (hashlib.sha1(str(rel).encode()).hexdigest() + ".lock")):
            if target.is_file() and _sha256(target) == meta["sha256"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            url = f"{base_url()}/{urllib.parse.quote(str(rel))}"
            _fetch(url, part, meta.get("bytes"), progress_desc=f"{name}/{fname}")
            digest = _sha256(part)
            if digest != meta["sha256"]:
                part.unlink(missing_ok=True)
                raise DownloadError(f"checksum mismatch for {url}: got {digest}, index says "
                                    f"{meta['sha256']} (file deleted)")
            os.replace(part, target)
    if folder is None:
        raise DownloadError(f"no files requested for {name}")
    return folder


def clear_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)
