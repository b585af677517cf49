"""The CLI's tables at a terminal's width: nothing cut to an ellipsis, no line past the width, and
the columns left out named under the table."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.tunekv.tui_helpers import trial_rows
from tunekv.cli.search_run import Progress
from tunekv.render.tables import Column, FittedTable


def rendered(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True)
    console.print(renderable)
    return console.export_text().splitlines()


def test_the_search_table_at_80_columns_shows_the_results_and_names_what_it_hides():
    progress = Progress(Console(), 60, json_lines=True)
    progress.rows, progress.stage = trial_rows(), "simulate: ranking configs"
    lines = rendered(progress.render(), 80)
    text = "\n".join(lines)
    assert "…" not in text and max(map(len, lines)) <= 80, text
    for row in trial_rows():
        assert f"{row.value:.0f}" in text and str(row.capacity) in text, text
    assert "ttft_p99" in text and "+30%" in text, text
    assert "hidden to fit 80 columns: max len, batch, mem, chunk, prefix" in text, text
    wide = "\n".join(rendered(progress.render(), 200))
    assert "hidden" not in wide and "max len" in wide and "prefix" in wide, wide


WORD = st.text(alphabet="abcdefghij0123456789.%", min_size=1, max_size=12)
CELL = st.lists(WORD, min_size=1, max_size=3).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), ncols=st.integers(1, 12), nrows=st.integers(1, 4), width=st.integers(30, 200))
def test_a_fitted_table_never_cuts_a_word_and_stays_in_its_width(data, ncols, nrows, width):
    titles = data.draw(st.lists(CELL, min_size=ncols, max_size=ncols, unique=True))
    hide = data.draw(st.permutations(range(ncols)))
    always = data.draw(st.integers(1, ncols))   # the first ones in ``hide`` order may go, the rest stay
    whole = data.draw(st.lists(st.booleans(), min_size=ncols, max_size=ncols))
    columns = [Column(t, hide=(hide.index(i) + 1 if hide.index(i) < ncols - always else None), wrap=not whole[i])
               for i, t in enumerate(titles)]
    rows = data.draw(st.lists(st.lists(CELL, min_size=ncols, max_size=ncols), min_size=nrows, max_size=nrows))
    table = FittedTable("t", columns, [rows])
    shown = table.layout(width)
    needed = sum(max(len(w) for text in [titles[i], *(r[i] for r in rows)] for w in text.split()) for i in shown)
    if needed + 2 * (len(shown) - 1) > width:
        return   # the columns that must stay do not fit even wrapped at every word: not this test's case
    lines = rendered(table, width)
    text = "\n".join(lines)
    assert "…" not in text and max(map(len, lines)) <= width, text
    words = set(text.split())
    for i in shown:
        for cell in [titles[i], *(r[i] for r in rows)]:
            assert set(cell.split()) <= words, (cell, text)
    def widest(i: int) -> int:   # a wrap=False column's cells whole, the rest at their longest word
        words = [len(w) for w in titles[i].split()] + [len(r[i]) if whole[i] else len(w)
                                                       for r in rows for w in r[i].split()]
        return max(words)

    if sum(widest(i) for i in shown) + 2 * (len(shown) - 1) <= width:   # room for those cells on one line
        assert all(r[i] in text for i in shown if whole[i] for r in rows), text
    hidden = [titles[i] for i in range(ncols) if i not in shown]
    assert all(c.hide is not None for i, c in enumerate(columns) if i not in shown)
    if hidden:
        assert f"hidden to fit {width} columns:" in text
