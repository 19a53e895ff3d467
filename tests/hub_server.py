"""A real HTTP server on 127.0.0.1 that speaks the part of the Hugging Face Hub protocol
`huggingface_hub.hf_hub_download` uses, for one repository: HEAD and GET on
`/{repo_id}/resolve/{revision}/{path}`.

What huggingface_hub reads (file_download.get_hf_file_metadata / _get_metadata_or_catch_error):
`X-Repo-Commit` (the commit the revision resolved to; it refuses a response without it), `ETag`
(the blob's cache key; the Hub sends `X-Linked-Etag` for LFS files, a plain ETag is the fallback it
also accepts), `Content-Length` (the size it checks the download against) and, on errors,
`X-Error-Code`. No redirect is sent, so the download URL is the resolve URL itself.

Each commit is a folder (a release made by zoo.publish); refs (branches, tags) name commits.
With `token`, every request without `Authorization: Bearer <token>` is refused with 401, as the Hub
does for a private or gated repository.
"""
import hashlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

from release_server import LocalServer


class HubServer(LocalServer):
    def __init__(self, repo_id: str, commits: dict, refs: dict, token: str | None = None):
        self.repo_id = repo_id
        self.commits = {sha: Path(folder).resolve() for sha, folder in commits.items()}
        self.refs = dict(refs)
        self.token = token
        # url path -> list of "corrupt" (flip one byte of the GET body), consumed in order
        self.faults = {}
        self.requests = []    # (method, url path, Authorization header or None)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(send_body=False)

            def do_GET(self):
                self._serve(send_body=True)

            def _refuse(self, status, code, commit=None):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, send_body):
                path = self.path.split("?")[0]
                auth = self.headers.get("Authorization")
                server.requests.append((self.command, unquote(path), auth))
                if server.token and auth != f"Bearer {server.token}":
                    return self._refuse(401, "RepoNotFound")
                prefix = f"/{server.repo_id}/resolve/"
                if not path.startswith(prefix):
                    return self._refuse(404, "RepoNotFound")
                # the revision is quoted with safe="" by huggingface_hub (a branch may hold '/')
                revision, _, rel = path[len(prefix):].partition("/")
                revision, rel = unquote(revision), unquote(rel)
                commit = server.refs.get(revision, revision)
                if commit not in server.commits:
                    return self._refuse(404, "RevisionNotFound")
                root = server.commits[commit]
                target = (root / rel).resolve()
                if root not in target.parents or not target.is_file():
                    return self._refuse(404, "EntryNotFound", commit)
                data = target.read_bytes()
                etag = hashlib.sha256(data).hexdigest()   # the Hub's etag of an LFS file
                faults = server.faults.get(unquote(path)) or []
                if send_body and faults and faults.pop(0) == "corrupt":
                    data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
                start = 0
                rng = self.headers.get("Range")
                if send_body and rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{etag}"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

        self._listen(Handler)
