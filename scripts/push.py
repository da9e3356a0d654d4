"""assistant push FOLDER --to REMOTE: a model (or adapter) folder -> a git-lfs repo or the Hugging Face Hub."""
from __future__ import annotations

import argparse

from myassistant.hub import push_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="assistant push", description=__doc__,
        epilog="The pushed commit holds exactly the folder (and --add files): files the repo had that the folder "
               "lacks are removed from it (they stay in its history; a git push names them). "
               "Tokens come from the environment only: HF_TOKEN for the Hub; OPENXLAB_TOKEN or GIT_TOKEN "
               "(and GIT_USERNAME) for git remotes.")
    parser.add_argument("folder", help="the model folder (merged weights, or an adapter)")
    parser.add_argument("--to", required=True, metavar="REMOTE",
                        help="a git URL (https://..., file://...), the path of a bare repo, or hf:owner/name")
    parser.add_argument("--private", action="store_true", help="create the Hugging Face repo private")
    parser.add_argument("--message", "-m", default=None, help="commit message (default: Upload <name>)")
    parser.add_argument("--branch", default="main", help="branch to push to (default: main)")
    parser.add_argument("--no-card", dest="card", action="store_false",
                        help="keep the folder's own README.md instead of writing a model card")
    parser.add_argument("--add", action="append", default=[], metavar="FILE",
                        help="also push FILE at the top of the repo (repeatable), e.g. a GGUF from 'assistant export' "
                             "and its .Modelfile; *.gguf goes to git-lfs")
    parser.add_argument("--cache-dir", default=None,
                        help="where the push work dir is kept (default: $ASSISTANT_CACHE or ~/.cache/myassistant)")
    args = parser.parse_args(argv)
    result = push_folder(args.folder, args.to, private=args.private, message=args.message, branch=args.branch,
                         card=args.card, cache_dir=args.cache_dir, add=args.add)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
