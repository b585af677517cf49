"""The CLI's tables of figures, fitted to the terminal: no vertical rules, titles wrapped between
words, and no column narrower than its longest word, so a number is never cut to ``25…`` (rich
shrinks every column of a table wider than the terminal, then ellipsizes). Where even that does
not fit, the columns that may go are left out, least needed first, and the caption names them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "FittedTable", "columns"]

GAP = 2   # characters between two columns: their paddings collapse into one, plus the rule's space


@dataclass(frozen=True)
class Column:
    """A column: its title, its alignment, ``hide``, the order it is left out in when the
    terminal is too narrow (1 first; None: always shown), and ``wrap``: whether its cells may
    break between words (a ``2 x tp1 = 2 GPUs`` layout reads only whole)."""

    title: str
    justify: Literal["left", "right"] = "right"
    hide: int | None = None
    wrap: bool = True


def columns(titles: Sequence[str], left: Collection[str], hidden_first: Sequence[str] = ()) -> list[Column]:
    """Columns for ``titles``: those in ``left`` aligned left, the rest right; a narrow terminal
    leaves out ``hidden_first``, first to last."""
    return [Column(title, "left" if title in left else "right",
                   hidden_first.index(title) + 1 if title in hidden_first else None) for title in titles]


def _widest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


class FittedTable:
    """A table of ``sections`` (each a list of rows, one cell a column, with a rule between
    sections) laid out for the width it is rendered at; a live display re-fits it on resize."""

    def __init__(self, title: str, columns: Sequence[Column], sections: Sequence[Sequence[Sequence[str]]],
                 caption: str | None = None) -> None:
        for rows in sections:
            for row in rows:
                assert len(row) == len(columns), f"a row of {len(row)} cells for {len(columns)} columns"
        self.title, self.columns, self.sections, self.caption = title, list(columns), sections, caption

    def _widths(self, title: Callable[[str], int], cell: Callable[[str], int], keep_whole: bool = True) -> list[int]:
        """Each column's width for ``title`` and ``cell`` sizes; ``keep_whole``: a ``wrap=False``
        column's cells at their full length."""
        return [max([title(col.title)] + [(len if keep_whole and not col.wrap else cell)(row[i])
                                          for rows in self.sections for row in rows])
                for i, col in enumerate(self.columns)]

    def layout(self, width: int) -> dict[int, int]:
        """The width of each column shown in ``width`` characters. The fewest ``hide`` columns are
        left out (in their order) for the rest to fit with no cell wrapped, or failing that, at
        their narrowest (every title and cell wrapped at its longest word, but ``wrap=False`` cells
        unless even hiding every column it may does not fit them); the room left goes
        first to the columns that need the least of it to show their cells, then their titles,
        unwrapped, and what remains to the columns still wrapped."""
        narrowest = self._widths(_widest_word, _widest_word)
        cells_whole = self._widths(_widest_word, len)
        whole = self._widths(len, len)
        order = [i for _, i in sorted((col.hide, i) for i, col in enumerate(self.columns) if col.hide is not None)]

        def kept(hidden: int) -> list[int]:
            return [i for i in range(len(self.columns)) if i not in order[:hidden]]

        def fits(widths: list[int], keep: list[int]) -> bool:
            return sum(widths[i] for i in keep) + GAP * (len(keep) - 1) <= width

        counts = range(len(order) + 1)
        if not fits(narrowest, kept(len(order))):   # the last resort: the wrap=False cells wrap too
            narrowest = self._widths(_widest_word, _widest_word, keep_whole=False)
        hidden = next((k for k in counts if fits(cells_whole, kept(k))),
                      next((k for k in counts if fits(narrowest, kept(k))), len(order)))
        keep = kept(hidden)
        widths = {i: narrowest[i] for i in keep}
        room = width - sum(widths.values()) - GAP * (len(keep) - 1)
        for target in (cells_whole, whole):
            for i in sorted(keep, key=lambda i: target[i] - widths[i]):
                if widths[i] < target[i] <= widths[i] + room:
                    room -= target[i] - widths[i]
                    widths[i] = target[i]
        for i in sorted(keep, key=lambda i: widths[i] - whole[i]):
            grant = max(0, min(room, whole[i] - widths[i]))
            widths[i] += grant
            room -= grant
        return widths

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self.layout(options.max_width)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
        for i, w in widths.items():
            table.add_column(self.columns[i].title, justify=self.columns[i].justify, width=w, overflow="fold")
        for s, rows in enumerate(self.sections):
            if s:
                table.add_section()
            for row in rows:
                table.add_row(*(row[i] for i in widths))
        yield Text(self.title, style="table.title")   # the terminal's width, not the table's: a long title reads whole
        yield table
        hidden = [col.title for i, col in enumerate(self.columns) if i not in widths]
        notes = [self.caption] if self.caption else []
        if hidden:
            notes.append(f"hidden to fit {options.max_width} columns: {', '.join(hidden)}")
        if notes:
            yield Text("; ".join(notes), style="dim")
