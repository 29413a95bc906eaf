"""How many CPU threads a search's torch work uses: ``--threads N`` / ``threads=N``.

torch runs each operator on ``torch.get_num_threads()`` threads, by default one
per core it sees.  On a machine that is busy with other work those threads
fight for the same cores, and an evaluation can get several times slower than
on one thread; on an idle machine more threads are faster for a large model
(a language model) and no faster for a tiny one.  So the choice is the user's,
stated once in the search's first progress line, and the same in the command
line and the Python API: ``None`` keeps torch's current setting (the default),
a number sets it for the duration of the search and restores it afterwards.
Ray workers (``--workers``) always use one thread each.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from haq_plugin.api.errors import HaqError


def check_threads(threads: Any) -> int | None:
    """``threads`` as a positive int, or None (torch's setting); anything else is refused."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise HaqError(f"threads must be a positive whole number (1 to the {os.cpu_count() or 1} cores here), "
                       f"or None for torch's default; got {threads!r}.")
    return threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block on ``threads`` torch threads (None: as set); yield the number in use."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def threads_note(threads: int) -> str:
    """The progress line that says how many threads the search uses, and how to change it."""
    return (f"torch threads: {threads} of {os.cpu_count() or 1} cores (--threads N to change; on a busy "
            "machine fewer threads are often faster)")
