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
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from zoo.errors import ZooError
from zoo.names import InvalidNameError, parse_name

DEFAULT_URL = "https://huggingface.co/zoo-models/keras-zoo/resolve/main"
ALLOWED_SCHEMES = ("https", "http", "file")
RETRIES = 5
BACKOFF = 0.5          # seconds, doubled after each failed attempt
TIMEOUT = 30           # seconds per connection attempt
CHUNK = 1 << 20
REQUIRED_FILES = ("model.weights.h5", "config.json")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_nofollow(path, append=True) as f:
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


def _fetch(url: str, dest: Path, expected_size: int | None = None, progress_desc=None,
           max_bytes: int | None = None) -> None:
    """Download url to dest (resuming an existing partial dest), retrying transient errors.

    Never writes more than `expected_size` (the index's size of the file) or `max_bytes`: a
    server that sends more is refused before the excess reaches the disk."""
    from tqdm import tqdm

    if urllib.parse.urlparse(url).scheme not in ALLOWED_SCHEMES:
        raise DownloadError(f"refusing URL {url!r}: only {', '.join(ALLOWED_SCHEMES)}")
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


def load_index(refresh: bool = True) -> dict:
    """The release index: fetched from the base URL, validated, then cached; the cached copy
    offline or (with an IndexWarning that says why) when the fresh one cannot be had. A fetched
    index that fails validation never replaces the cached one."""
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
        raise DownloadError(f"offline (ZOO_OFFLINE=1) and no cached weights index at {cached}")
    try:
        return _read_index(cached)
    except DownloadError as e:
        raise DownloadError(f"cached index {cached} is unusable ({e}); delete it and retry") \
            from None


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
    parse_name(name)
    root = cache_dir()
    if offline():
        folder = _inside(root, safe_relpath(f"models/{name}"))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DownloadError(f"offline (ZOO_OFFLINE=1) and {name} is not fully cached: "
                                f"missing {', '.join(str(folder / f) for f in missing)}")
        return folder
    entry = _model_entry(load_index(), name)
    if entry.get("random"):
        import warnings
        warnings.warn(f"{name}: the published weights are RANDOM (converted for parity testing "
                      "only); its predictions are meaningless", IndexWarning, stacklevel=2)
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
            _fetch(url, part, meta["bytes"], progress_desc=f"{name}/{fname}")
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
