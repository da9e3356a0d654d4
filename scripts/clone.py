"""assistant clone SRC: fetch a model (git-lfs repo, Hugging Face id, or folder), verify it, print its path."""
from __future__ import annotations

import argparse

from myassistant.hub import fetch_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="assistant clone", description=__doc__,
        epilog="A git clone is reused and fast-forwarded on the next call; every git-lfs file is checked "
               "against its pointer (size and sha256). Tokens: HF_TOKEN, OPENXLAB_TOKEN or GIT_TOKEN.")
    parser.add_argument("source", metavar="SRC",
                        help="a git URL (https://..., file://...), owner/name or hf:owner/name, or a local folder")
    parser.add_argument("--cache-dir", default=None,
                        help="where clones live (default: $ASSISTANT_CACHE/models or ~/.cache/myassistant/models; "
                             "Hugging Face ids: the Hugging Face cache)")
    args = parser.parse_args(argv)
    print(fetch_model(args.source, args.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
