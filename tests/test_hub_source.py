"""fetch_model / `assistant clone` for local folders and Hugging Face ids (offline, from a real HF cache layout).

What cannot run here (no network): a real snapshot_download from the Hub and an upload with
create_repo/upload_folder; those calls are exercised only up to their errors.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _assistant(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "GIT_TOKEN", "OPENXLAB_TOKEN")}
    full.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120)


def _hf_cache(root: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: blobs/<sha>, snapshots/<commit>/<file> -> ../../blobs/<sha>, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in (("config.json", b'{"model_type": "llama"}'), ("model.safetensors", os.urandom(2048))):
        blob = repo / "blobs" / f"blob-{name}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_hub_imports_no_torch_and_nothing_of_ours():
    code = ("import sys, myassistant.hub; roots = {'.'.join(m.split('.')[:2]) for m in sys.modules}; "
            "print(sorted(roots & {'torch', 'transformers', 'myassistant.chat', 'myassistant.model', "
            "'myassistant.trainer'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fetch_model_signature():
    from myassistant.hub import fetch_model

    params = inspect.signature(fetch_model).parameters
    assert list(params)[:2] == ["source", "cache_dir"] and params["cache_dir"].default is None
    assert params["token_env"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["token_env"].default == ("HF_TOKEN", "OPENXLAB_TOKEN", "GIT_TOKEN")


def test_hf_repo_id_resolves_from_the_offline_cache(tmp_path):
    snapshot = _hf_cache(tmp_path / "hf", "alice/tiny-assistant")
    for source in ("alice/tiny-assistant", "hf:alice/tiny-assistant"):
        result = _assistant(["clone", source, "--cache-dir", str(tmp_path / "hf")])
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()) == snapshot
    assert (snapshot / "model.safetensors").stat().st_size == 2048


def test_hf_repo_not_cached_offline_is_a_clear_error(tmp_path):
    _hf_cache(tmp_path / "hf", "alice/tiny-assistant")
    result = _assistant(["clone", "alice/other", "--cache-dir", str(tmp_path / "hf")])
    assert result.returncode == 1
    assert result.stderr.startswith("assistant clone: error: alice/other is not in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE" in result.stderr and result.stderr.count("\n") == 1
    assert f"(no folder {ROOT / 'alice' / 'other'} here either)" in result.stderr  # a mistyped merged/alice
    result = _assistant(["clone", "hf:alice/other", "--cache-dir", str(tmp_path / "hf")])
    assert result.returncode == 1 and "here either" not in result.stderr  # hf: names a repo, never a folder


def test_local_folder_is_returned_as_is(tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = _assistant(["clone", str(folder)])
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == folder.resolve()
    nothing = _assistant(["clone", "not a source"])
    assert nothing.returncode == 1 and "is not a folder, a git URL" in nothing.stderr
    gone = _assistant(["clone", str(tmp_path / "moved" / "merged")])  # a path, not an owner/name id
    assert gone.returncode == 1 and gone.stderr.strip().endswith(f"{tmp_path / 'moved' / 'merged'}: no such folder (a "
                                                                  "model source is a folder, a git URL or a Hugging "
                                                                  "Face repo id)"), gone.stderr


def test_hf_push_without_network_fails_clearly(tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = _assistant(["push", str(folder), "--to", "hf:alice/tiny-assistant"], HF_TOKEN="hf_dummy_token_123")
    assert result.returncode == 1
    assert result.stderr.startswith("assistant push: error: ") and result.stderr.count("\n") == 1
    assert "hf_dummy_token_123" not in result.stderr + result.stdout
    assert not any(p.name.startswith(".push-") for p in tmp_path.iterdir())  # staging folder cleaned up


def test_clone_into_a_cache_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("a file where the cache folder would be")
    result = _assistant(["clone", f"file://{tmp_path}/models.git", "--cache-dir", str(tmp_path / "afile" / "models")])
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"cannot make the cache folder {tmp_path / 'afile' / 'models'} for the clone (Not a directory)" in result.stderr
    assert "MODEL_CACHE" in result.stderr and "--cache-dir" in result.stderr
