"""What `nami` prints, so that it survives a pipe, a log file and a narrow terminal.

* `log(text)`: one line stays one line (no wrapping at the terminal's or at 80 columns).
* `print_table(table)`: no number is cut to "…": off a terminal the table is printed as wide as
  it needs; on a terminal too narrow for it, a cell folds onto a second line instead.
"""

from __future__ import annotations

from rich.console import Console

stderr = Console(stderr=True)  # progress bars, notes and log lines
stdout = Console()  # tables and summaries


def log(text: str, console: Console | None = None) -> None:
    """Print `text` as it is (no markup), never wrapped."""
    (console or stderr).print(text, markup=False, highlight=False, soft_wrap=True)


def print_table(table, console: Console | None = None) -> None:
    """Print a rich table without cutting a cell (see the module docstring)."""
    console = console or stdout
    for column in table.columns:
        column.overflow = "fold"
    if not console.is_terminal:
        measured = Console(width=100_000).measure(table).maximum
        title = len(str(table.title or "")) + 4
        console = Console(file=console.file, width=max(measured, title, 80), soft_wrap=True)
    console.print(table)
