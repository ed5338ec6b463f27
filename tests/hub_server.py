"""
A minimal Hugging Face Hub-compatible HTTP endpoint on 127.0.0.1, for testing `push_to_hub` / `from_pretrained`
round trips without network access.

It implements the endpoints `huggingface_hub` calls for model repositories: repository creation, model info (by
revision), pre-upload negotiation (every file is uploaded inline, "regular" mode), commits (NDJSON with base64
content), model-card YAML validation, file resolution / download with the `X-Repo-Commit`, `ETag` and `Content-Length` headers, listings of the
repository tree and `whoami`. Repositories live in memory; every commit gets a fresh 40-hex id.

Usage:

```py
with HubServer() as hub, hub.activate():
    unet.push_to_hub("dawn-tester/my-unet")
    UNet3DFlowModel.from_pretrained("dawn-tester/my-unet")
```
"""

import base64
import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlparse


USER_NAME = "dawn-tester"


@dataclass
class _Commit:
    oid: str
    files: Dict[str, bytes]
    summary: str


@dataclass
class _Repository:
    repo_id: str
    private: bool = False
    commits: List[_Commit] = field(default_factory=list)

    def resolve(self, revision: str) -> Optional[_Commit]:
        """The commit of a branch name ("main") or a commit id, or `None`."""
        if not self.commits:
            return None
        if revision in ("main", "HEAD"):
            return self.commits[-1]
        for commit in self.commits:
            if commit.oid == revision:
                return commit
        return None


def _git_blob_sha(content: bytes) -> str:
    """The git blob id of a file, which the Hub uses as the ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubRequestHandler(BaseHTTPRequestHandler):
    server_version = "DAWNTestHub/1.0"
    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> "HubServer":
        return self.server.hub

    def log_message(self, format, *args):  # noqa: A002 - signature of BaseHTTPRequestHandler
        self.hub.requests.append(f"{self.command} {self.path}")

    # -- responses ----------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers["Content-Length"] = headers.get("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: Optional[Dict[str, str]] = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str, message: str, head: bool = False):
        # huggingface_hub maps X-Error-Code to RepositoryNotFoundError / EntryNotFoundError / RevisionNotFoundError.
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- routing ------------------------------------------------------------------------------------------------------
    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch(head=False)

    def do_POST(self):
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml":
            # Model-card metadata is accepted as is.
            return self._json(200, {"errors": [], "warnings": []})
        parts = self._api_model_route(path)
        if parts is None:
            return self._error(404, "EndpointNotFound", f"no endpoint POST {path}")
        repo_id, action, revision = parts
        if action == "preupload":
            return self._preupload(repo_id, json.loads(body or b"{}"))
        if action == "commit":
            return self._commit(repo_id, revision, body)
        if action == "paths-info":
            return self._paths_info(repo_id, revision, body)
        return self._error(404, "EndpointNotFound", f"no endpoint POST {path}")

    def _dispatch(self, head: bool):
        path = unquote(urlparse(self.path).path)
        if path == "/api/whoami-v2":
            return self._json(200, {"type": "user", "name": USER_NAME, "auth": {"accessToken": {"role": "write"}}})
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
            if "/tree/" in rest:
                repo_id, tail = rest.split("/tree/", 1)
                revision, _, folder = tail.partition("/")
                return self._tree(repo_id, revision, folder)
            if "/revision/" in rest:
                repo_id, revision = rest.split("/revision/", 1)
                return self._model_info(repo_id, revision)
            return self._model_info(rest, "main")
        if "/resolve/" in path:
            repo_id, tail = path.lstrip("/").split("/resolve/", 1)
            revision, _, filename = tail.partition("/")
            return self._resolve(repo_id, revision, filename, head)
        return self._error(404, "EndpointNotFound", f"no endpoint GET {path}", head=head)

    @staticmethod
    def _api_model_route(path: str) -> Optional[Tuple[str, str, str]]:
        """/api/models/{owner}/{name}/{action}/{revision} → (repo_id, action, revision)."""
        if not path.startswith("/api/models/"):
            return None
        pieces = path[len("/api/models/") :].split("/")
        if len(pieces) < 4:
            return None
        return "/".join(pieces[:2]), pieces[2], "/".join(pieces[3:])

    def _repository(self, repo_id: str) -> Optional[_Repository]:
        return self.hub.repositories.get(repo_id)

    # -- endpoints ----------------------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict):
        name = payload.get("name")
        if not name:
            return self._error(400, "BadRequest", "missing repository name")
        owner = payload.get("organization") or USER_NAME
        repo_id = f"{owner}/{name}"
        if payload.get("type", "model") not in (None, "model"):
            return self._error(400, "BadRequest", "this test hub only hosts model repositories")
        with self.hub.lock:
            if repo_id in self.hub.repositories:
                return self._json(409, {"error": "You already created this model repo", "url": self._url(repo_id)})
            repository = _Repository(repo_id=repo_id, private=bool(payload.get("private")))
            # A new Hub repository starts with one commit holding a .gitattributes file.
            repository.commits.append(_Commit(self.hub.new_oid(), {".gitattributes": b""}, "initial commit"))
            self.hub.repositories[repo_id] = repository
        return self._json(200, {"url": self._url(repo_id), "name": repo_id, "id": repo_id})

    def _commit_or_error(self, repo_id: str, revision: str, head: bool = False):
        """The commit of `repo_id` at `revision`, or `None` after answering 404 (no such repository or revision)."""
        repository = self._repository(repo_id)
        if repository is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
            return None
        commit = repository.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Revision {revision} not found in {repo_id}", head=head)
        return commit

    def _url(self, repo_id: str) -> str:
        return f"{self.hub.url}/{repo_id}"

    def _model_info(self, repo_id: str, revision: str):
        commit = self._commit_or_error(repo_id, revision)
        if commit is None:
            return
        siblings = [{"rfilename": name, "size": len(content)} for name, content in sorted(commit.files.items())]
        return self._json(
            200,
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": self._repository(repo_id).private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str):
        commit = self._commit_or_error(repo_id, revision)
        if commit is None:
            return
        recursive = "recursive=true" in (urlparse(self.path).query or "").lower()
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        entries, folders = [], set()
        for name, content in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            parents = name[len(prefix) :].split("/")[:-1]
            if parents and not recursive:
                folders.add(prefix + parents[0])
                continue
            folders.update(prefix + "/".join(parents[: depth + 1]) for depth in range(len(parents)))
            entries.append({"type": "file", "path": name, "size": len(content), "oid": _git_blob_sha(content)})
        entries += [{"type": "directory", "path": name, "oid": _git_blob_sha(name.encode())} for name in sorted(folders)]
        return self._json(200, entries)

    def _paths_info(self, repo_id: str, revision: str, body: bytes):
        commit = self._commit_or_error(repo_id, revision)
        if commit is None:
            return
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        entries = [
            {"type": "file", "path": path, "size": len(commit.files[path]), "oid": _git_blob_sha(commit.files[path])}
            for path in paths
            if path in commit.files
        ]
        return self._json(200, entries)

    def _preupload(self, repo_id: str, payload: dict):
        if self._repository(repo_id) is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        files = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False} for item in payload.get("files", [])]
        return self._json(200, {"files": files, "commitOid": None})

    def _commit(self, repo_id: str, revision: str, body: bytes):
        repository = self._repository(repo_id)
        if repository is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        summary = ""
        with self.hub.lock:
            parent = repository.resolve(revision)
            files = dict(parent.files) if parent is not None else {}
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                entry = json.loads(line)
                key, value = entry.get("key"), entry.get("value", {})
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        return self._error(400, "BadRequest", "only base64-encoded inline files are supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key in ("deletedFile", "deletedFolder"):
                    target = value["path"].rstrip("/")
                    for name in [n for n in files if n == target or n.startswith(target + "/")]:
                        del files[name]
                elif key == "lfsFile":
                    return self._error(400, "BadRequest", "LFS uploads are not supported by this test hub")
            commit = _Commit(self.hub.new_oid(), files, summary)
            repository.commits.append(commit)
        return self._json(
            200,
            {"commitUrl": f"{self._url(repo_id)}/commit/{commit.oid}", "commitOid": commit.oid, "success": True},
        )

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool):
        commit = self._commit_or_error(repo_id, revision, head=head)
        if commit is None:
            return
        if filename not in commit.files:
            return self._error(404, "EntryNotFound", f"{filename} not found in {repo_id}@{revision}", head=head)
        content = commit.files[filename]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(content)),
            "ETag": f'"{_git_blob_sha(content)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        self._send(200, content, headers, head=head)


class HubServer:
    r"""
    In-memory Hub-compatible server on `127.0.0.1` (a free port), run in a background thread.

    Attributes:
        url (`str`): Base URL to use as `HF_ENDPOINT`.
        repositories (`dict`): Hosted repositories by id.
        requests (`List[str]`): `"METHOD path"` of every request served, for assertions.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repositories: Dict[str, _Repository] = {}
        self.requests: List[str] = []
        self.lock = threading.Lock()
        self._commit_counter = 0
        self._server = ThreadingHTTPServer((host, port), _HubRequestHandler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def new_oid(self) -> str:
        self._commit_counter += 1
        return hashlib.sha1(f"commit-{self._commit_counter}".encode()).hexdigest()

    def add_commit(self, repo_id: str, files: Dict[str, bytes], summary: str = "upload") -> str:
        """
        Hosts `files` (path in the repository → content) as a new commit of `repo_id` (created when missing) and
        returns the commit id: a quick way to stand up a third-party repository for a test.
        """
        with self.lock:
            repository = self.repositories.setdefault(repo_id, _Repository(repo_id=repo_id))
            commit = _Commit(self.new_oid(), dict(files), summary)
            repository.commits.append(commit)
        return commit.oid

    def downloads(self) -> List[str]:
        """The `GET .../resolve/...` requests served so far (file contents sent), in order."""
        return [request for request in self.requests if request.startswith("GET ") and "/resolve/" in request]

    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        """The files of a hosted repository at a revision."""
        repository = self.repositories.get(repo_id)
        if repository is None:
            raise KeyError(f"no repository {repo_id!r} on this hub; hosted: {sorted(self.repositories)}")
        commit = repository.resolve(revision)
        if commit is None:
            raise KeyError(f"no revision {revision!r} in {repo_id}")
        return dict(commit.files)

    @contextlib.contextmanager
    def activate(self, token: str = "hf_local_test_token"):
        """
        Points `huggingface_hub` at this server while the context is open, restoring everything afterwards.
        huggingface_hub reads `HF_ENDPOINT` once at import time (its URL template, trusted hosts and the module-level
        `HfApi` behind `create_repo` / `upload_folder`), so those are patched as well as the environment.
        """
        from huggingface_hub import constants, hf_api

        patches = [
            (constants, "ENDPOINT", self.url),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"),
            (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"}),
            (constants, "HF_HUB_OFFLINE", False),
            (hf_api.api, "endpoint", self.url),
        ]
        environment = {"HF_ENDPOINT": self.url, "HF_TOKEN": token, "HF_HUB_OFFLINE": "0"}
        saved_attributes = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        saved_environment = {name: os.environ.get(name) for name in environment}
        try:
            for owner, name, value in patches:
                setattr(owner, name, value)
            os.environ.update(environment)
            yield self
        finally:
            for owner, name, value in saved_attributes:
                setattr(owner, name, value)
            for name, value in saved_environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="dawn-test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
