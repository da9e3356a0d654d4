"""assistant presets list | copy NAME DEST: the shipped training configs, and a copy to edit."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="assistant presets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", allow_abbrev=False, help="list the shipped presets", description="List the shipped presets, each with the "
                   "first line of its comment.")
    copy = sub.add_parser("copy", allow_abbrev=False, help="copy a preset to edit it", description="Copy a shipped preset to edit it, "
                          "then train with it: assistant train --config DEST.")
    copy.add_argument("name", help="preset name, as 'assistant presets list' prints it")
    copy.add_argument("dest", help="file to write, or a folder to put NAME.yaml in")
    copy.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    args = parser.parse_args(argv)

    from myassistant.trainer.config import copy_preset, list_presets

    if args.command == "list":
        presets = list_presets()
        width = max(map(len, presets), default=0)
        sys.stdout.write("".join(f"{name:<{width}}  {about}\n" for name, about in presets.items()))
        return 0
    dest = copy_preset(args.name, args.dest, force=args.force)
    sys.stdout.write(f"{dest}\n")
    return 0
