"""Push a folder to any git remote with git-lfs, and clone one back with every weight verified.

Works with OpenXLab, GitHub, self-hosted servers and `file://` bare repos alike: everything goes
through the git and git-lfs command-line tools, tokens through `gitcmd.git_env`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import HubError, strip_credentials
from .gitcmd import GIT_TOKEN_ENVS, git, git_env, require_git_lfs
from .remote import local_repo

log = logging.getLogger(__name__)

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.model", "*.gguf", "*.h5", "*.msgpack", "*.ckpt",
                "*.onnx", "*.tiktoken")
MAX_PLAIN_FILE_BYTES = 10 * 1024 * 1024  # larger files must go through LFS (hosts reject big git blobs)
POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
MAX_POINTER_BYTES = 1024
_VERIFIED = "assistant-verified.json"  # in .git/: size+mtime of files whose sha256 was checked


@dataclass
class PushResult:
    remote: str  # credentials stripped
    revision: str | None  # the commit now at the remote branch
    changed: bool  # False: the remote already had exactly these files
    work_dir: Path | None = None

    def __str__(self) -> str:
        state = "pushed" if self.changed else "already up to date"
        return f"{self.remote}: {state}" + (f" ({self.revision})" if self.revision else "")


def parse_pointer(data: bytes) -> tuple[str, int] | None:
    """(sha256, size) if `data` is a git-lfs pointer file, else None."""
    if len(data) > MAX_POINTER_BYTES or not data.startswith(POINTER_PREFIX):
        return None
    fields = dict(line.split(" ", 1) for line in data.decode("utf-8", "replace").splitlines() if " " in line)
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if not oid.startswith("sha256:") or not size.isdigit():
        return None
    return oid[len("sha256:"):], int(size)


def is_pointer_file(path: Path) -> bool:
    if path.stat().st_size > MAX_POINTER_BYTES:
        return False
    return parse_pointer(path.read_bytes()) is not None


def pointer_files(folder: Path) -> list[str]:
    """Files under `folder` (outside .git) that are git-lfs pointers instead of content."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if ".git" not in rel.parts and path.is_file() and not path.is_symlink() and is_pointer_file(path):
            found.append(rel.as_posix())
    return found


def pointer_error(folder: Path, names: list[str]) -> HubError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return HubError(
        f"{len(names)} file(s) in {folder} are git-lfs pointer files, not the weights: {shown}. The LFS download "
        f"did not finish or the server lacks these objects: run `git -C {folder} lfs pull`, and make sure the model "
        "was pushed with git-lfs (`assistant push`)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def lfs_entries(repo: Path, env: dict[str, str]) -> dict[str, tuple[str, int]]:
    """{path: (sha256, size)} for every file that HEAD stores as a git-lfs pointer."""
    listing = git(["ls-tree", "-r", "-l", "-z", "HEAD"], cwd=repo, env=env, what="listing the clone").stdout
    small = {}
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        _, kind, oid, size = meta.split()
        if kind == "blob" and size.isdigit() and int(size) <= MAX_POINTER_BYTES:
            small[oid] = small.get(oid, []) + [path]
    if not small:
        return {}
    out = git(["cat-file", "--batch"], cwd=repo, env=env, input="".join(o + "\n" for o in small),
              what="reading the LFS pointers", encoding="latin-1").stdout
    found, pos = {}, 0
    while pos < len(out):
        header_end = out.index("\n", pos)
        oid, _, size = out[pos:header_end].split()
        data = out[header_end + 1:header_end + 1 + int(size)]
        pos = header_end + 1 + int(size) + 1
        pointer = parse_pointer(data.encode("latin-1"))
        if pointer:
            found.update({p: pointer for p in small[oid]})
    return found


def verify_checkout(repo: Path, env: dict[str, str]) -> None:
    """Every LFS file in the work tree is real content whose size and sha256 match its pointer.

    Hashes are remembered per (size, mtime) in .git/, so a second start of the app does not re-read
    gigabytes of weights that did not change.
    """
    record_path = repo / ".git" / _VERIFIED
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    pointers, bad, verified = [], [], {}
    for rel, (oid, size) in sorted(lfs_entries(repo, env).items()):
        path = repo / rel
        if not path.is_file() or is_pointer_file(path):
            pointers.append(rel)
            continue
        stat = path.stat()
        key = [oid, stat.st_size, stat.st_mtime_ns]
        if stat.st_size != size or (record.get(rel) != key and _sha256(path) != oid):
            bad.append(rel)
            continue
        verified[rel] = key
    if pointers:
        raise pointer_error(repo, pointers)
    if bad:
        raise HubError(f"{', '.join(bad)} in {repo}: size or sha256 does not match its git-lfs pointer (a corrupt "
                       f"download): delete {repo} and run the command again")
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(verified))
    tmp.replace(record_path)


def _init_repo(path: Path, url: str, branch: str, env: dict[str, str]) -> None:
    """A fresh repo with `origin` = url (no credentials inside) and git-lfs filters set for it alone."""
    tmp = path.with_name(path.name + ".init")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    git(["init", "-q", "-b", branch], cwd=tmp, env=env)
    git(["remote", "add", "origin", url], cwd=tmp, env=env)
    git(["lfs", "install", "--local"], cwd=tmp, env=env, what="git lfs install")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _open_work_dir(work_dir: Path, url: str, branch: str, env: dict[str, str]) -> None:
    ok = (work_dir / ".git").is_dir() and git(
        ["remote", "get-url", "origin"], cwd=work_dir, env=env, check=False).stdout.strip() == url
    if not ok:
        _init_repo(work_dir, url, branch, env)


def _write_gitattributes(work_dir: Path, extra_lines: list[str]) -> None:
    lines = [f"{p} filter=lfs diff=lfs merge=lfs -text" for p in LFS_PATTERNS]
    lines += [line for line in extra_lines if line.strip() and line not in lines]
    _write_if_changed(work_dir / ".gitattributes", ("\n".join(lines) + "\n").encode())


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _refuse_large_plain_files(work_dir: Path, files: dict[str, Path], env: dict[str, str]) -> None:
    large = [rel for rel, src in files.items() if src.stat().st_size > MAX_PLAIN_FILE_BYTES]
    if not large:
        return
    out = git(["check-attr", "-z", "filter", "--", *large], cwd=work_dir, env=env, what="git check-attr").stdout
    fields = out.split("\0")
    plain = [fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] != "lfs"]
    if plain:
        raise HubError(
            f"{', '.join(plain)}: larger than {MAX_PLAIN_FILE_BYTES >> 20} MB but not tracked by git-lfs (tracked: "
            f"{' '.join(LFS_PATTERNS)}): add a pattern for it to a .gitattributes in the model folder, e.g. "
            "`*.ext filter=lfs diff=lfs merge=lfs -text`, or remove it")


def _sync_tree(work_dir: Path, files: dict[str, Path], generated: dict[str, bytes]) -> None:
    """Make the work tree hold exactly `files` + `generated` (+ .gitattributes)."""
    keep = set(files) | set(generated) | {".gitattributes"}
    for path in sorted(work_dir.rglob("*"), reverse=True):
        rel = path.relative_to(work_dir)
        if rel.parts[0] == ".git":
            continue
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif rel.as_posix() not in keep:
            path.unlink()
    for rel, src in files.items():
        dst = work_dir / rel
        st = src.stat()
        if dst.is_file() and (dst.stat().st_size, dst.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            continue  # copied by an earlier push; keeping its stat lets git skip re-hashing it
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".partial")
        tmp.unlink(missing_ok=True)
        try:  # a hard link: the work tree costs no disk (git never writes a push work tree's files, it only reads them)
            os.link(src, tmp)
        except OSError:  # another file system, or one without links
            shutil.copy2(src, tmp)
        tmp.replace(dst)
    for rel, data in generated.items():
        (work_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_if_changed(work_dir / rel, data)


def _identity(work_dir: Path, env: dict[str, str]) -> list[str]:
    have = git(["config", "user.email"], cwd=work_dir, env=env, check=False).stdout.strip()
    return [] if have else ["-c", "user.name=myassistant", "-c", "user.email=myassistant@localhost"]


def _commit(files: dict[str, Path], generated: dict[str, bytes], url: str, work_dir: Path, branch: str,
            message: str, gitattributes: list[str], env: dict[str, str]) -> tuple[str | None, str | None]:
    """The work dir on top of the remote branch, holding exactly the files, committed: (remote tip, HEAD)."""
    _open_work_dir(work_dir, url, branch, env)
    git(["fetch", "-q", "--prune", "origin"], cwd=work_dir, env=env, url=url,
        what=f"reaching {strip_credentials(url)}")
    remote_head = git(["rev-parse", "-q", "--verify", f"refs/remotes/origin/{branch}^{{commit}}"],
                      cwd=work_dir, env=env, check=False).stdout.strip() or None
    if remote_head:
        # Build on the remote's tip without checking anything out: no weights are downloaded to push.
        git(["reset", "-q", "--mixed", remote_head], cwd=work_dir, env=env)
    elif git(["rev-parse", "-q", "--verify", "HEAD"], cwd=work_dir, env=env, check=False).returncode == 0:
        # the branch is gone from the remote (a repo made again to be rid of a push): a history of its own, not the
        # commits of earlier pushes, whose files the remote no longer has
        log.info("%s has no branch %s: its first commit", strip_credentials(url), branch)
        git(["update-ref", "-d", "HEAD"], cwd=work_dir, env=env)
    _write_gitattributes(work_dir, gitattributes)
    _refuse_large_plain_files(work_dir, files, env)
    _sync_tree(work_dir, files, generated)
    git(["add", "-A"], cwd=work_dir, env=env, what="git add")
    removed = git(["diff", "--cached", "--name-only", "--diff-filter=D"], cwd=work_dir, env=env).stdout.split()
    if removed:  # a push makes the repo hold the folder: say what that takes away (an earlier --add's files)
        log.warning("removing from %s what the folder no longer has: %s (push them with --add to keep them)",
                    strip_credentials(url), ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5
                                                                        else ""))
    if git(["diff", "--cached", "--quiet"], cwd=work_dir, env=env, check=False).returncode != 0:
        git([*_identity(work_dir, env), "commit", "-q", "-m", message], cwd=work_dir, env=env, what="git commit")
    head = git(["rev-parse", "-q", "--verify", "HEAD"], cwd=work_dir, env=env, check=False).stdout.strip() or None
    return remote_head, head


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def push_git(files: dict[str, Path], generated: dict[str, bytes], url: str, *, work_dir: Path,
             branch: str = "main", message: str = "Upload model", gitattributes: list[str] = (),
             token_env: tuple[str, ...] = GIT_TOKEN_ENVS) -> PushResult:
    """Commit exactly `files` (rel path -> source) + `generated` (rel path -> bytes) and push to `url`.

    The work dir is a cache: it is rebuilt on top of the remote branch on every push, so an interrupted
    push just runs again (git-lfs skips objects the server already has).
    """
    require_git_lfs()
    env = git_env(token_env, url=url)
    shown = strip_credentials(url)
    fresh = not (work_dir / ".git").is_dir()
    try:
        remote_head, head = _commit(files, generated, url, work_dir, branch, message, list(gitattributes), env)
    except BaseException:
        if fresh:  # nothing committed: a failed first push leaves no work dir behind in the cache
            shutil.rmtree(work_dir, ignore_errors=True)
            _remove_if_empty(work_dir.parent)
        raise
    if head is None or head == remote_head:
        log.info("%s (%s) is already up to date", shown, branch)
        return PushResult(shown, remote_head, False, work_dir)
    lfs = git(["lfs", "ls-files", "-s"], cwd=work_dir, env=env, what="git lfs ls-files").stdout
    log.info("pushing %s to %s (%s); LFS files:\n%s", head[:10], shown, branch, lfs.rstrip() or "  (none)")
    try:
        git(["push", "-q", "origin", f"HEAD:refs/heads/{branch}"], cwd=work_dir, env=env, url=url,
            what=f"pushing to {shown}")
    except HubError as err:
        raise HubError(f"{err}. The commit is kept in {work_dir}; once fixed, run the same command again to "
                       "resume (LFS objects already uploaded are skipped)") from err
    log.info("pushed %s to %s (%s)", head[:10], shown, branch)
    _head_to_pushed_branch(url, branch, env)
    _say_if_not_the_default_branch(work_dir, url, branch, env)
    return PushResult(shown, head, True, work_dir)


def _say_if_not_the_default_branch(work_dir: Path, url: str, branch: str, env: dict[str, str]) -> None:
    """A clone (`assistant clone`, the app, git) checks out the remote's default branch: a push to another one is
    not what they get."""
    said = git(["ls-remote", "--symref", "origin", "HEAD"], cwd=work_dir, env=env, url=url, check=False).stdout
    default = re.search(r"^ref: refs/heads/(\S+)\tHEAD", said, re.M)
    if default and default[1] != branch:
        log.warning("%s's default branch is %s, not %s: a clone (assistant clone, the app) gets %s's files; make %s "
                    "the default on the server, or push with --branch %s", strip_credentials(url), default[1], branch,
                    default[1], branch, default[1])


def _head_to_pushed_branch(url: str, branch: str, env: dict[str, str]) -> None:
    """A bare repo on this machine whose HEAD names no branch (`git init --bare` names master; we push main) cloned
    with plain `git clone` as an empty folder ("remote HEAD refers to nonexistent ref"): its HEAD is pointed at the
    branch pushed. A server's HEAD is the server's."""
    repo = local_repo(url)
    if repo is None:
        return
    head = git(["symbolic-ref", "-q", "HEAD"], cwd=repo, env=env, check=False).stdout.strip()
    if head and git(["rev-parse", "-q", "--verify", head], cwd=repo, env=env, check=False).returncode != 0:
        git(["symbolic-ref", "HEAD", f"refs/heads/{branch}"], cwd=repo, env=env, what="pointing HEAD at the branch")


def _checkout_some_branch(work: Path, env: dict[str, str], shown: str) -> None:
    """The remote's HEAD names no branch (e.g. a bare repo made with another default): take main, else any."""
    branches = git(["for-each-ref", "--format=%(refname:strip=3)", "refs/remotes/origin"], cwd=work, env=env,
                   what="listing branches").stdout.split()
    branches = [b for b in branches if b != "HEAD"]
    if not branches:
        shutil.rmtree(work, ignore_errors=True)
        raise HubError(f"{shown} is empty: push a model to it first (`assistant push FOLDER --to {shown}`)")
    branch = "main" if "main" in branches else "master" if "master" in branches else branches[0]
    git(["checkout", "-q", "-B", branch, "--track", f"origin/{branch}"], cwd=work, env=env, what="git checkout")


def clone_or_update(url: str, dest: Path, *, token_env: tuple[str, ...] = GIT_TOKEN_ENVS) -> Path:
    """A verified clone of `url` at `dest`: cloned once (resumable), then fetched and fast-forwarded."""
    require_git_lfs()
    env = git_env(token_env, skip_smudge=True, url=url)
    shown = strip_credentials(url)
    if (dest / ".git").is_dir():
        try:
            git(["fetch", "-q", "origin"], cwd=dest, env=env, url=url, what=f"updating from {shown}")
        except HubError as err:
            verify_checkout(dest, env)
            log.warning("%s; using the cached clone at %s", err, dest)
            return dest
        git(["merge", "-q", "--ff-only", "@{upstream}"], cwd=dest, env=env, url=url,
            what=f"fast-forwarding the cached clone {dest} (delete it to clone afresh)")
        work = dest
    else:
        # Clone into a sibling that survives an interruption: the next call resumes there.
        work = dest.with_name(dest.name + ".partial")
        resumable = (work / ".git").is_dir() and git(
            ["rev-parse", "-q", "--verify", "HEAD"], cwd=work, env=env, check=False).returncode == 0
        if not resumable:
            shutil.rmtree(work, ignore_errors=True)
            try:
                work.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a read-only disk, a file in the way: the cache folder is the user's choice
                raise HubError(f"cannot make the cache folder {work.parent} for the clone ({err.strerror}); "
                               "choose a folder you can write (app.py: MODEL_CACHE; assistant clone: --cache-dir)"
                               ) from None
            git(["clone", "-q", url, str(work)], cwd=work.parent, env=env, url=url, what=f"cloning {shown}")
            git(["lfs", "install", "--local"], cwd=work, env=env, what="git lfs install")
            if git(["rev-parse", "-q", "--verify", "HEAD"], cwd=work, env=env, check=False).returncode != 0:
                _checkout_some_branch(work, env, shown)
    try:
        git(["lfs", "pull"], cwd=work, env=env, url=url, what=f"downloading the LFS files of {shown} into {work}")
    except HubError as err:
        left = pointer_files(work)
        if not left:
            raise
        raise HubError(f"{err} (still pointer files, not weights: {', '.join(left[:5])}"
                       f"{' ...' if len(left) > 5 else ''}: a download cut short resumes when this runs again; "
                       "objects the server lacks must be pushed to it again, with `assistant push`)") from err
    verify_checkout(work, env)
    if work != dest:
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):  # no .git: the user's, not to be replaced
            raise HubError(f"{dest} is in the way of the clone and is not one (no .git); move it away or choose "
                           f"another cache folder (app.py: MODEL_CACHE; assistant clone: --cache-dir). The clone "
                           f"waits in {work}")
        os.replace(work, dest)
    log.info("%s is at %s", shown, dest)
    return dest
