"""torch's thread count for a search: set for the block, restored after it, even on an error."""

from __future__ import annotations

import pytest
import torch

from haq_plugin.api.errors import HaqError
from haq_plugin.engine.threads import check_threads, threads_note, torch_threads


def test_torch_threads_sets_then_restores_even_when_the_block_fails():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError):
        with torch_threads(target) as in_use:
            assert in_use == target == torch.get_num_threads()
            raise RuntimeError("evaluation failed")
    assert torch.get_num_threads() == before


def test_none_keeps_torch_setting():
    before = torch.get_num_threads()
    with torch_threads(None) as in_use:
        assert in_use == before
    assert check_threads(None) is None and check_threads(3) == 3


def test_the_note_names_the_count_and_the_option():
    assert threads_note(2).startswith("torch threads: 2 of ") and "--threads N" in threads_note(2)


def test_refusal_says_what_is_allowed():
    with pytest.raises(HaqError, match=r"positive whole number .* got 0"):
        check_threads(0)
