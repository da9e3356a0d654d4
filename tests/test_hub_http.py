"""hub over HTTP with authentication: a git + git-lfs server on 127.0.0.1 that demands a token.

The server is git's own `git http-backend` (smart HTTP) behind a stdlib HTTP server, plus a small
git-lfs batch API with local storage, all behind HTTP Basic auth — the shape of OpenXLab / GitLab.
(giftless is installed in the venv but without its dependencies — flask, figcan, webargs... — so it
cannot run here; the stdlib server also lets the test demand a token on every request.)
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER, TOKEN = "alice", "tok-" + secrets.token_hex(12)
pytestmark = pytest.mark.skipif(subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
                                reason="git-lfs is not installed")


class GitLfsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, user: str, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.lfs = root / "git", root / "lfs"
        self.lfs.mkdir(parents=True)
        self.basic = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.ticket = "Bearer " + secrets.token_hex(16)  # what LFS object transfers carry instead of the token
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, authorized)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GitLfsServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().strip().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: dict) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/vnd.git-lfs+json"})

    def _route(self) -> None:
        body = self._body()
        path, _, query = self.path.partition("?")
        auth = self.headers.get("Authorization", "")
        is_object = path.startswith("/objects/")
        ok = auth == (self.server.ticket if is_object else self.server.basic)
        self.server.requests.append((self.command, path, ok))
        if not ok:
            return self._send(401, b"auth required", {"WWW-Authenticate": 'Basic realm="test"'})
        if path.endswith("/info/lfs/objects/batch"):
            return self._json(self._batch(json.loads(body)))
        if path.endswith("/info/lfs/locks/verify"):
            return self._json({"ours": [], "theirs": []})
        if is_object:
            store = self.server.lfs / path.rsplit("/", 1)[-1]
            if self.command == "PUT":
                assert hashlib.sha256(body).hexdigest() == store.name
                store.write_bytes(body)
                return self._send(200)
            return self._send(200, store.read_bytes()) if store.is_file() else self._send(404)
        self._cgi(path, query, body)

    do_GET = do_POST = do_PUT = _route

    def _batch(self, request: dict) -> dict:
        upload = request["operation"] == "upload"
        objects = []
        for obj in request["objects"]:
            have = (self.server.lfs / obj["oid"]).is_file()
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if upload and not have or not upload and have:
                entry["actions"] = {request["operation"]: {
                    "href": f"{self.server.url}/objects/{obj['oid']}", "header": {"Authorization": self.server.ticket}}}
            elif not upload:
                entry["error"] = {"code": 404, "message": "Object does not exist"}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def _cgi(self, path: str, query: str, body: bytes) -> None:
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.server.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": USER,
               "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body))}
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "GIT_PROTOCOL")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n") if b"\r\n\r\n" in out else out.partition(b"\n\n")
        headers = dict(line.split(": ", 1) for line in head.decode().splitlines() if ": " in line)
        code = int(headers.pop("Status", "200").split()[0])
        self._send(code, payload, headers)


@pytest.fixture
def server(tmp_path):
    srv = GitLfsServer(tmp_path / "server", USER, TOKEN)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(srv.root / "model.git")], check=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _assistant(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_TOKEN", "OPENXLAB_TOKEN", "GIT_USERNAME", "HF_TOKEN")}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), ASSISTANT_CACHE=str(tmp_path / "cache"), GIT_CONFIG_NOSYSTEM="1",
               OMP_NUM_THREADS="1", **extra)
    return env


def _model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "tokenizer.model").write_bytes(os.urandom(20_000))
    (folder / "config.json").write_text('{"model_type": "internlm2"}')
    return folder


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_push_and_clone_over_http_with_a_token(tmp_path, server):
    model = _model(tmp_path / "model")
    remote = f"{server.url}/model.git"
    env = _env(tmp_path, GIT_TOKEN=TOKEN, GIT_USERNAME=USER)

    first = _assistant(["push", str(model), "--to", remote], env)
    assert first.returncode == 0, first.stderr
    assert "pushed" in first.stdout
    stored = {p.name for p in server.lfs.iterdir()}
    assert {hashlib.sha256((model / n).read_bytes()).hexdigest() for n in ("model.safetensors", "tokenizer.model")} \
        <= stored
    assert any(ok and path.endswith("/git-receive-pack") for _, path, ok in server.requests)

    second = _assistant(["push", str(model), "--to", remote], env)
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stdout

    cloned = _assistant(["clone", remote], env)
    assert cloned.returncode == 0, cloned.stderr
    clone = Path(cloned.stdout.strip())
    for name in ("model.safetensors", "tokenizer.model", "config.json"):
        assert (clone / name).read_bytes() == (model / name).read_bytes()

    # The token went over the wire (every request above needed it) but is nowhere on disk or in output.
    needle = TOKEN.encode()
    for run in (first, second, cloned):
        assert TOKEN not in run.stdout + run.stderr
    assert _files_containing(tmp_path / "cache", needle) == []
    assert _files_containing(tmp_path / "home", needle) == []
    assert _files_containing(server.root, needle) == []
    for repo in (clone, *(tmp_path / "cache" / "push").iterdir()):
        assert TOKEN not in (repo / ".git" / "config").read_text()
        log = subprocess.run(["git", "log", "-p", "--all"], cwd=repo, capture_output=True, text=True, check=True)
        assert TOKEN not in log.stdout and log.stdout


def test_missing_or_wrong_token_is_a_clear_error(tmp_path, server):
    model = _model(tmp_path / "model")
    remote = f"{server.url}/model.git"
    no_token = _assistant(["push", str(model), "--to", remote], _env(tmp_path))
    assert no_token.returncode == 1
    assert "authentication required" in no_token.stderr and "GIT_TOKEN" in no_token.stderr
    assert no_token.stderr.count("\n") == 1  # one line, no traceback

    wrong = _assistant(["clone", remote], _env(tmp_path, GIT_TOKEN="not-the-token"))
    assert wrong.returncode == 1
    assert "refused the token" in wrong.stderr  # set and refused: not "set a token"
    assert "not-the-token" not in wrong.stderr + wrong.stdout

    in_url = _assistant(["clone", remote.replace("://", f"://{USER}:{TOKEN}@")], _env(tmp_path))
    assert in_url.returncode == 1
    assert "carries credentials" in in_url.stderr and TOKEN not in in_url.stderr


def test_the_hubs_token_goes_to_its_git_and_nowhere_else(monkeypatch):
    """A Space's MODEL_REPO as huggingface.co's git URL was cloned without HF_TOKEN (a private repo: refused), as the
    README says it is read; no other server gets it."""
    from myassistant.hub.gitcmd import _PASSWORD_VAR, git_env  # the variable the credential helper answers from

    for name in ("GIT_TOKEN", "OPENXLAB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    names = ("HF_TOKEN", "OPENXLAB_TOKEN", "GIT_TOKEN")  # what clone and the app pass
    assert git_env(names, url="https://huggingface.co/alice/tiny-assistant").get(_PASSWORD_VAR) == "hf_secret"
    assert _PASSWORD_VAR not in git_env(names, url="https://code.openxlab.org.cn/alice/tiny-assistant.git")
