"""assistant studio: the whole pipeline in a local web UI (base model, data, train, report, chat, push).

Listens on 127.0.0.1 only. --host 0.0.0.0 or --share make it reachable by others, which needs
a login (--auth user:password or STUDIO_AUTH), since the studio runs jobs and pushes with tokens.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def port(text: str) -> int:
    """A TCP port to listen on: 1-65535 (Gradio's traceback otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: 1-65535")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="assistant studio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="studio_work",
                        help="folder for every file the studio writes: data/, runs/, merged/ (default ./studio_work)")
    parser.add_argument("--port", type=port, default=7861, help="port (default 7861)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--share", action="store_true", help="also a public gradio.live link (needs --auth)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="login asked in the browser (or STUDIO_AUTH)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    args = parser.parse_args(argv)
    if Path(args.workdir).expanduser().exists() and not Path(args.workdir).expanduser().is_dir():
        parser.error(f"--workdir {args.workdir}: a file, not a folder")

    from myassistant.studio.serve import login_for

    login_for(args.host, args.share, args.auth)  # refused before the heavy imports: exposed needs a login
    from myassistant.studio.app import launch

    launch(args.workdir, host=args.host, port=args.port, share=args.share, auth=args.auth, open_browser=args.open)
    return 0
