"""assistant push-app --model-repo SRC --to REMOTE: write and push the Gradio app repo that serves SRC."""
from __future__ import annotations

import argparse

from myassistant.hub import push_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="assistant push-app", description=__doc__,
        epilog="The app repo gets app.py, requirements.txt, packages.txt and a README with Spaces front "
               "matter; at start-up the app clones SRC (override with MODEL_REPO in the app's settings).")
    parser.add_argument("--model-repo", required=True, metavar="SRC",
                        help="the model the app serves: a git URL or a Hugging Face id owner/name")
    parser.add_argument("--to", required=True, metavar="REMOTE",
                        help="the app repo: a git URL, the path of a bare repo, or hf:owner/name (a Space)")
    parser.add_argument("--title", default=None, help="the app's title (default: the model repo's name)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--message", "-m", default=None, help="commit message")
    parser.add_argument("--branch", default="main", help="branch to push to (default: main)")
    parser.add_argument("--cache-dir", default=None, help="where the app folder and push work dir are kept")
    args = parser.parse_args(argv)
    result = push_app(args.model_repo, args.to, title=args.title, private=args.private, message=args.message,
                      branch=args.branch, cache_dir=args.cache_dir)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
