"""The corpus and its token windows: provenance, layout, and one-line errors."""

from __future__ import annotations

import sys

import pytest
import torch

from haq_plugin import HaqError
from haq_plugin.tasks.llm.text import load_text, make_windows, split_windows
from tests.tasks.llm.tiny_llama import one_line, tiny_text


def test_pydoc_text_is_the_sorted_topics_and_names_the_python_version():
    from pydoc_data.topics import topics

    text = load_text("text:pydoc")
    assert text.text == "\n\n".join(topics[key] for key in sorted(topics))
    assert text.source["python"] == list(sys.version_info[:2])
    assert text.source["topics"] == len(topics) > 50
    assert len(text.text) > 300_000


def test_windows_never_overlap_and_test_split_does_not_move():
    ids = torch.arange(1000)
    windows = split_windows(ids, window=50, calibration_windows=3, val_windows=2, test_windows=4)
    assert windows.calibration.shape == (3, 50) and windows.val.shape == (2, 50) and windows.test.shape == (4, 50)
    assert windows.calibration.dtype == torch.long
    everything = torch.cat([windows.calibration.flatten(), windows.val.flatten(), windows.test.flatten()])
    assert everything.unique().numel() == everything.numel() == 450  # no token in two windows
    for split in (windows.calibration, windows.val, windows.test):  # each window is a contiguous slice
        assert torch.equal(split[:, 1:] - split[:, :-1], torch.ones(split.shape[0], 49, dtype=torch.long))
    assert windows.val[0, 0] == 0 and windows.calibration[0, 0] == 100 and windows.test[-1, -1] == 999
    more_val = split_windows(ids, window=50, calibration_windows=0, val_windows=10, test_windows=4)
    assert torch.equal(more_val.test, windows.test)
    assert windows.tokens == {"calibration": 150, "val": 100, "test": 200}


def test_make_windows_cuts_the_tokenized_text(tiny):
    _, tokenizer = tiny
    text = load_text("text:pydoc")
    ids = tokenizer(tiny_text(), add_special_tokens=False)["input_ids"]
    from haq_plugin.tasks.llm.text import Text

    windows = make_windows(tokenizer, Text(tiny_text(), "text:tiny"), window=32, calibration_windows=2,
                           val_windows=2, test_windows=3, context_length=128)
    assert windows.total_tokens == len(ids) > 32 * 7
    assert windows.val[0].tolist() == ids[:32] and windows.calibration[0].tolist() == ids[64:96]
    assert windows.test[-1].tolist() == ids[-32:]
    assert windows.source["spec"] == "text:tiny" and text.spec == "text:pydoc"


def test_too_short_text_says_how_many_tokens_it_has_and_needs():
    with pytest.raises(HaqError) as error:
        split_windows(torch.arange(300), window=64, calibration_windows=1, val_windows=2, test_windows=2,
                      name="text:notes.txt")
    message = one_line(error)
    assert "text:notes.txt has 300 tokens" in message and "need 320" in message


def test_window_longer_than_the_context_names_both_numbers():
    with pytest.raises(HaqError) as error:
        split_windows(torch.arange(10_000), window=256, context_length=128)
    assert "window 256 is longer than the model's context length 128" in one_line(error)


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"), (b"  \n\t\n", "is empty"), (b"GGUF\x03\x00\x00\x00", "binary"),
    (b"caf\xe9 latin-1", "not UTF-8"),
])
def test_unusable_text_files_are_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(HaqError) as error:
        load_text(f"text:{path}")
    assert expected in one_line(error)


def test_missing_text_file_and_unknown_spec():
    with pytest.raises(HaqError) as error:
        load_text("text:/nonexistent/corpus.txt")
    assert "cannot read" in one_line(error)
    with pytest.raises(HaqError) as error:
        load_text("pydoc")
    assert "text:pydoc" in one_line(error)
