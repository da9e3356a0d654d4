"""argparse types the commands share: a bad number is the usage line naming the flag, before anything loads."""
from __future__ import annotations

import argparse
from typing import Callable


def at_least(minimum: int, why: str) -> Callable[[str], int]:
    """An int flag's type that refuses values under ``minimum``, saying ``why`` ("the answers need at least 1 token")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: {why}")
        return value
    return parse
