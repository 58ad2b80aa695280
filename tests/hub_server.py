"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub's
snapshot_download calls (repo info at a revision, the recursive tree of a commit, and HEAD / GET
of a file through resolve), serving repos from a folder, so the real client runs against it; and
those its upload_folder calls (create a repo, ask each file's upload mode, commit), which it answers
as for small files: every file goes inline in the commit (no LFS / Xet storage).

Repos are ``root/ORG/NAME/COMMIT/...`` folders (COMMIT: 40 hex digits) with ``root/ORG/NAME/refs.json``
mapping branch names to commits. The server counts the files it sends, and can be told to cut a
file short (a download interrupted mid-file) a number of times.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class HubServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sent: Counter[str] = Counter()  # "ORG/NAME/path" -> bodies sent
        self.truncate: Counter[str] = Counter()  # "ORG/NAME/path" -> times to send half of it and hang up
        self.static: dict[str, Path] = {}  # "BUCKET/PATH" -> file, served at /BUCKET/PATH (a GCS stand-in)
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, repo: str, files: Path, branch: str = "main") -> str:
        """Copies the folder ``files`` as a new commit of ``repo`` on ``branch``; returns the commit."""
        return self.commit(
            repo, {_name(p, files): p.read_bytes() for p in Path(files).rglob("*") if p.is_file()}, branch
        )

    def commit(self, repo: str, files: dict[str, bytes], branch: str) -> str:
        """A new commit of ``repo`` on ``branch`` holding ``files`` (repo path -> contents)."""
        digest = hashlib.sha1(repo.encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        commit = digest.hexdigest()
        for name, data in files.items():
            (self.root / repo / commit / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / repo / commit / name).write_bytes(data)
        refs_file = self.root / repo / "refs.json"
        refs = json.loads(refs_file.read_text()) if refs_file.exists() else {}
        refs_file.write_text(json.dumps({**refs, branch: commit}))
        return commit

    def commit_of(self, repo: str, revision: str) -> str | None:
        refs_file = self.root / repo / "refs.json"
        if not refs_file.exists():
            return None
        if (self.root / repo / revision).is_dir() and len(revision) == 40:
            return revision
        return json.loads(refs_file.read_text()).get(revision)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_POST(self) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if parts == ["api", "repos", "create"]:
            request = json.loads(data)
            repo = f"{request['organization']}/{request['name']}"
            (self.hub.root / repo).mkdir(parents=True, exist_ok=True)
            return self._send(
                200, json.dumps({"url": f"{self.hub.endpoint}/{repo}"}).encode(), "application/json", {}, True
            )
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(data)["files"]
            ]
            return self._send(200, json.dumps({"files": files}).encode(), "application/json", {}, True)
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            repo, branch = "/".join(parts[2:4]), parts[5]
            parent = self.hub.commit_of(repo, branch)
            folder = self.hub.root / repo / str(parent)
            files = {_name(p, folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if parent else {}
            for line in data.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    return self._error(400, "UnsupportedOperation")
            commit = self.hub.commit(repo, files, branch)
            info = {"commitUrl": f"{self.hub.endpoint}/{repo}/commit/{commit}", "commitOid": commit}
            return self._send(200, json.dumps(info).encode(), "application/json", {}, True)
        self._error(404, "EntryNotFound")

    def _answer(self, body: bool) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo, what, revision = "/".join(parts[2:4]), parts[4], parts[5]
            commit = self.hub.commit_of(repo, revision)
            if commit is None:
                return self._error(404, "RepoNotFound" if not (self.hub.root / repo).exists() else "RevisionNotFound")
            folder = self.hub.root / repo / commit
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            if what == "revision":
                info = {"id": repo, "sha": commit, "siblings": [{"rfilename": _name(p, folder)} for p in files]}
            else:
                info = [
                    {"type": "file", "path": _name(p, folder), "size": p.stat().st_size, "oid": _oid(p)} for p in files
                ]
            return self._send(200, json.dumps(info).encode(), "application/json", {}, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            commit = self.hub.commit_of(repo, revision)
            path = None if commit is None else self.hub.root / repo / commit / name
            if path is None or not path.is_file():
                return self._error(404, "EntryNotFound")
            headers = {"X-Repo-Commit": commit, "ETag": f'"{_oid(path)}"'}
            return self._file(f"{repo}/{name}", path.read_bytes(), headers, body)
        if "/".join(parts) in self.hub.static:
            return self._file("/".join(parts), self.hub.static["/".join(parts)].read_bytes(), {}, body)
        self._error(404, "EntryNotFound")

    def _file(self, key: str, data: bytes, headers: dict, body: bool) -> None:
        """Sends ``data``, or half of it and hangs up while ``key`` is to be cut short."""
        if body:
            self.hub.sent[key] += 1
            if self.hub.truncate[key] > 0:
                self.hub.truncate[key] -= 1
                return self._send(200, data, "application/octet-stream", headers, body, cut=len(data) // 2)
        self._send(200, data, "application/octet-stream", headers, body)

    def _error(self, status: int, code: str) -> None:
        self._send(status, json.dumps({"error": code}).encode(), "application/json", {"X-Error-Code": code}, True)

    def _send(self, status: int, data: bytes, kind: str, headers: dict, body: bool, cut: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data if cut is None else data[:cut])
            if cut is not None:
                self.close_connection = True


def _name(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _oid(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
