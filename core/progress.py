"""Training progress for people: a rich progress bar on a terminal, one plain line per log step elsewhere."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _console(console: Any = None) -> Any:
    if console is not None:
        return console
    from rich.console import Console

    return Console(stderr=True)


def warn(message: str, console: Any = None) -> None:
    _console(console).print(f"[bold yellow]warning:[/] {message}", highlight=False)


def say(message: str, console: Any = None) -> None:
    """A line of news for people (evaluation steps), on stderr like the progress bar."""
    from rich.markup import escape

    _console(console).print(f"[cyan]eval[/] {escape(message)}", highlight=False)


def _summary(metrics: Mapping[str, float]) -> str:
    parts = []
    if "train/loss" in metrics:
        parts.append(f"loss {metrics['train/loss']:.4f}")
    if "train/tokens_per_second" in metrics:
        parts.append(f"{metrics['train/tokens_per_second']:,.0f} tok/s")
    if "train/lr" in metrics:
        parts.append(f"lr {metrics['train/lr']:.2e}")
    return "  ".join(parts)


class Progress:
    """Context manager; ``update(step, metrics)`` after each step, ``note`` for evaluation results."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, console: Any = None):
        self.total, self.start, self.enabled = total, start, enabled
        self.console = _console(console) if enabled else None
        self._bar: Any = None
        self._task: Any = None
        self._text = ""

    def __enter__(self) -> Progress:
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=self.console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
        if not self.enabled:
            return
        if metrics:
            self._text = _summary(metrics)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=self._text)
        elif metrics:
            self.console.print(f"step {step}/{self.total}  {self._text}", highlight=False)

    def note(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        shown = {k: v for k, v in metrics.items() if k.count("/") <= 2 and "/p" not in k}
        text = "  ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
        self.console.print(f"[cyan]eval[/] step {step}: {text}", highlight=False)
