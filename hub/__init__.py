"""Push models and the app to git-lfs remotes or the Hugging Face Hub, and fetch them back verified.

Imports nothing else of this project and no torch, so pushing and cloning work on any machine.
Tokens come from the environment only: HF_TOKEN for the Hub; OPENXLAB_TOKEN / GIT_TOKEN (user name in
GIT_USERNAME) for git remotes, handed to git by a transient credential helper, never written anywhere.
"""
from .app_repo import push_app, write_app_folder
from .card import assistant_name, model_card, model_info
from .errors import HubError, redact
from .git_lfs import LFS_PATTERNS, PushResult
from .push import push_folder
from .source import fetch_model

__all__ = ["HubError", "LFS_PATTERNS", "PushResult", "assistant_name", "fetch_model", "model_card", "model_info",
           "push_app", "push_folder", "redact", "write_app_folder"]
