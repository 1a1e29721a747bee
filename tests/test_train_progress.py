"""Rank 0's progress: plain log lines when stderr is a file or pipe, a tqdm bar on a terminal, nothing elsewhere."""
from __future__ import annotations

import io
import re

from jala_ds.train.progress import Progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_only_at_log_steps_with_metrics_and_eta():
    stream = io.StringIO()
    progress = Progress(total_steps=10, start_step=4, enabled=True, stream=stream)
    progress.update(5)
    progress.update(6, {"loss": 2.5, "samples_per_s": 12.25})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"step 6/10 \| loss 2\.5 \| samples_per_s 12\.25 \| eta \d+:\d\d:\d\d", lines[0])


def test_a_terminal_gets_a_bar_that_resumes_at_the_start_step():
    stream = Terminal()
    progress = Progress(total_steps=10, start_step=4, enabled=True, stream=stream)
    progress.update(6, {"loss": 2.5})
    progress.close()
    shown = stream.getvalue()
    assert "6/10" in shown and "loss 2.5" in shown and "step 6/10 |" not in shown


def test_other_ranks_print_nothing():
    stream = Terminal()
    progress = Progress(total_steps=10, start_step=0, enabled=False, stream=stream)
    progress.update(1, {"loss": 1.0})
    progress.close()
    assert stream.getvalue() == ""
