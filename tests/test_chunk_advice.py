"""``%%core4``'s default chunk count and its advice when the chunks were mostly overhead (real shell, real workers)."""

from __future__ import annotations

import os

import numpy as np

from core4nb.cells import CHUNK_BYTES, default_chunks
from core4nb.executor.chunks import CHUNKS_PER_SLOT
from tests.test_magics import cell, shell  # noqa: F401  (shell: the fixture)

ADVICE = "core4: overhead dominated this run: the median of its 32 chunks ran "


def test_default_is_a_few_chunks_per_live_slot(shell):  # noqa: F811
    cell(shell, "--over numbers --out counts")
    slots = os.cpu_count()  # the embedded default's local node: one process per core
    assert len(shell.user_ns["counts"]) == CHUNKS_PER_SLOT * slots
    assert sum(shell.user_ns["counts"]) == 669
    shell.run_cell("few = [1, 2, 3]")
    cell(shell, "--over few --out each", "sum(few)")
    assert shell.user_ns["each"] == [1, 2, 3]  # never more chunks than items


def test_large_data_gets_more_chunks():
    huge = np.broadcast_to(np.zeros(1), (2**30,))  # 8 GiB as far as nbytes goes, 8 bytes in memory
    assert default_chunks(huge, slots=2) == huge.nbytes // CHUNK_BYTES == 128
    assert default_chunks(range(10**9), slots=2) == 2 * CHUNKS_PER_SLOT


def test_tiny_chunks_get_one_line_of_advice_once(shell, capsys):  # noqa: F811
    cell(shell, "--over numbers --chunks 32 --out first", "len(numbers)")
    err = capsys.readouterr().err
    assert err.startswith(ADVICE) and err.count("\n") == 1
    assert "more to schedule and collect; use --chunks " in err
    cell(shell, "--over numbers --chunks 32 --out again", "len(numbers)")
    assert capsys.readouterr().err == ""  # said once for this cell
    assert shell.user_ns["again"] == shell.user_ns["first"]


def test_chunks_that_do_real_work_get_no_advice(shell, capsys):  # noqa: F811
    shell.run_cell("import time\nfour = [1, 2, 3, 4]")
    cell(shell, "--over four --chunks 4 --out slept", "time.sleep(1.0); four")
    assert shell.user_ns["slept"] == [[1], [2], [3], [4]]
    assert capsys.readouterr().err == ""
