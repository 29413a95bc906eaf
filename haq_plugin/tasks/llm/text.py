"""The text a language model is calibrated, searched and tested on, cut into token windows.

``text:pydoc`` needs no download: Python ships ``pydoc_data.topics``, about 465 KB of
English technical prose (the ``help()`` topics).  It differs between Python versions,
so the version is part of its provenance and of any figure measured on it.
``text:FILE`` takes a user's own UTF-8 text.

The token stream is cut into consecutive, non-overlapping windows of ``window``
tokens: val windows from the start, calibration windows right after them, and test
windows from the end.  Taking the test split from the end keeps it the same tokens
whatever number of val or calibration windows a run asks for, so test figures of runs
with different search budgets stay comparable; no token is in two splits.  Windows
are scored independently, with no beginning-of-sequence token added: every window is
a plain slice of the text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from haq_plugin.api.errors import HaqError

# CPU-sized defaults.  A 256-token forward of a 135M model takes about 1.2 s on one
# thread, so two val windows keep one evaluation near 2.5 s and a 100-evaluation search
# near 4 minutes, leaving room for calibration and the agent within 15 minutes; the test
# split is four times larger because it is scored once per result, not once per episode.
DEFAULT_WINDOW = 256
DEFAULT_CALIBRATION_WINDOWS = 4
DEFAULT_VAL_WINDOWS = 2
DEFAULT_TEST_WINDOWS = 8
TEXT_FORMS = "text:pydoc (the Python help topics) or text:FILE (a UTF-8 text file)"


@dataclass(frozen=True)
class Text:
    """A corpus and where it came from."""

    text: str
    spec: str
    source: dict[str, Any] = field(default_factory=dict)


def pydoc_text() -> Text:
    """The standard library's help topics, sorted by key and joined with blank lines."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return Text(text, "text:pydoc", {"kind": "pydoc", "python": list(sys.version_info[:2]),
                                      "topics": len(topics), "characters": len(text)})


def file_text(path: str | Path) -> Text:
    """A user's UTF-8 text file; a missing, binary or empty one is a one-line HaqError."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise HaqError(f"text:{path}: cannot read it ({error.strerror or error})") from None
    if b"\x00" in raw:
        raise HaqError(f"text:{path} is a binary file, not text (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HaqError(f"text:{path} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    if not text.strip():
        raise HaqError(f"text:{path} is empty")
    return Text(text, f"text:{path}", {"kind": "file", "file": str(path.resolve()), "characters": len(text)})


def load_text(spec: str) -> Text:
    """The corpus a ``--data`` spec names: ``text:pydoc`` or ``text:FILE``."""
    kind, sep, rest = spec.partition(":")
    if kind != "text" or not sep or not rest:
        raise HaqError(f"text corpus {spec!r}: expected {TEXT_FORMS}")
    return pydoc_text() if rest == "pydoc" else file_text(rest)


@dataclass
class TokenWindows:
    """Non-overlapping token windows of one text, each split a LongTensor ``[n_windows, window]``."""

    calibration: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    window: int
    total_tokens: int  # in the whole text, of which the splits use a part
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> dict[str, int]:
        """Tokens per split."""
        return {name: int(split.numel()) for name, split in
                (("calibration", self.calibration), ("val", self.val), ("test", self.test))}


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids, without special tokens."""
    # verbose=False: the text is far longer than the model's context on purpose; it is cut later
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _check_counts(window: int, calibration_windows: int, val_windows: int, test_windows: int,
                  context_length: int | None) -> None:
    if window < 2:
        raise HaqError(f"window must be at least 2 tokens (one to predict from, one to predict), not {window}")
    if context_length is not None and window > context_length:
        raise HaqError(f"window {window} is longer than the model's context length {context_length}")
    if calibration_windows < 0:
        raise HaqError(f"calibration windows must be 0 or more, not {calibration_windows}")
    for name, count in (("val", val_windows), ("test", test_windows)):
        if count < 1:
            raise HaqError(f"{name} windows must be at least 1, not {count}")


def split_windows(ids: torch.Tensor, *, window: int = DEFAULT_WINDOW,
                  calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS, val_windows: int = DEFAULT_VAL_WINDOWS,
                  test_windows: int = DEFAULT_TEST_WINDOWS, context_length: int | None = None,
                  name: str = "the text", source: dict[str, Any] | None = None) -> TokenWindows:
    """Cut a token stream into val (from the start), calibration (next) and test (from the end) windows."""
    _check_counts(window, calibration_windows, val_windows, test_windows, context_length)
    total = int(ids.numel())
    count = calibration_windows + val_windows + test_windows
    if count * window > total:
        raise HaqError(f"{name} has {total} tokens; {count} windows of {window} tokens "
                       f"({calibration_windows} calibration, {val_windows} val, {test_windows} test) "
                       f"need {count * window}: use a longer text, fewer windows or a shorter window")
    head = ids[: (val_windows + calibration_windows) * window].reshape(-1, window)
    tail = ids[total - test_windows * window:].reshape(test_windows, window)
    return TokenWindows(calibration=head[val_windows:].clone(), val=head[:val_windows].clone(),
                        test=tail.clone(), window=window, total_tokens=total, source=dict(source or {}))


def make_windows(tokenizer: Any, text: Text, *, window: int = DEFAULT_WINDOW,
                 calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS, val_windows: int = DEFAULT_VAL_WINDOWS,
                 test_windows: int = DEFAULT_TEST_WINDOWS, context_length: int | None = None) -> TokenWindows:
    """Tokenize ``text`` and cut it into windows (see the module docstring for the layout)."""
    _check_counts(window, calibration_windows, val_windows, test_windows, context_length)
    ids = tokenize(tokenizer, text.text)
    source = dict(text.source, spec=text.spec, tokens=int(ids.numel()), window=window,
                  layout="val from the start, calibration next, test from the end")
    return split_windows(ids, window=window, calibration_windows=calibration_windows, val_windows=val_windows,
                         test_windows=test_windows, context_length=context_length, name=text.spec, source=source)
