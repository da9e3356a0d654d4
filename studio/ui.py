"""What every tab shares: the workspace folders, messages next to fields, the page's look."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr


@dataclass
class Workspace:
    """Every file the studio writes lives under one folder; jobs run with it as their current folder."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root).expanduser().resolve()
        self.data, self.runs, self.merged = self.root / "data", self.root / "runs", self.root / "merged"
        self.models, self.presets, self.cache = self.root / "models", self.root / "presets", self.root / "cache"
        self.jobs = self.root / ".jobs"  # logs of the short jobs (clone, report, merge, push)

    def rel(self, path: str | Path) -> str:
        """``path`` as the shown commands write it: relative to the workspace when inside it."""
        path = Path(path).expanduser().resolve()
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def path(self, text: str) -> Path:
        """A path typed in a field: relative ones are inside the workspace."""
        p = Path(text.strip()).expanduser()
        return p if p.is_absolute() else self.root / p


def error_slot() -> gr.Markdown:
    """The message line under a field; hidden while there is nothing to say."""
    return gr.Markdown("", visible=False, elem_classes=["field-error"])


def show(message: str | None) -> dict:
    """An update for an error slot: the message, or hidden when None."""
    if not message:
        return gr.update(value="", visible=False)
    return gr.update(value=f"⚠ {message}", visible=True)


def note(message: str, kind: str = "ok") -> str:
    icon = {"ok": "✓", "warn": "⚠", "run": "▸", "info": "·"}[kind]
    return f"{icon} {message}"


def one_line(err: BaseException) -> str:
    """A user error as the CLI prints it (one line); anything else as its class and message."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if getattr(type(err), "user_error", False) else f"{type(err).__name__}: {text}"


def slug(text: str) -> str:
    """A folder name from free text (a run or data name)."""
    return re.sub(r"[^\w.-]+", "-", text.strip()).strip("-.").lower()


CSS = """
.field-error p { color: #b42318 !important; font-size: 0.9em; margin: -4px 0 6px 2px; }
.studio-header h1 { margin-bottom: 0; }
.studio-header p { color: var(--body-text-color-subdued); margin-top: 2px; }
.command textarea, .command code { font-family: ui-monospace, monospace; font-size: 0.85em; }
.live-figures p { font-size: 1.05em; }
footer { display: none !important; }
"""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="blue", neutral_hue="slate")
