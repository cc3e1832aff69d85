"""What a finding is: one sentence at the top of a report, with its numbers, the conditions they hold
under and the figure that shows it. Every subject module (report/findings/<subject>.py) returns these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Finding:
    text: str  # one sentence, with its numbers (plain text: escaped when rendered)
    figure: str | None = None  # the figure (plots.FIGURES name) that shows it; linked when drawn
    conditions: str = ""  # what the numbers hold under: dtype, T, threads, device, ...
    answered: bool = True  # False: the data cannot answer; `text` says why


Finder = Callable[[pd.DataFrame], list[Finding]]
