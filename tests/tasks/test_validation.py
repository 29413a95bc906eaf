"""A user's batches checked before a search: an empty batch is refused, not scored as nothing."""

from __future__ import annotations

import pytest
import torch

from haq_plugin.api.errors import HaqError
from haq_plugin.tasks.validation import as_batches, check_calibration


def test_a_batch_of_zero_samples_is_refused_with_its_index():
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(HaqError, match=r"val_data batch 1 has no samples \(its inputs have shape \(0, 1, 8, 8\)\)"):
        as_batches([(x, torch.zeros(4)), (x[:0], torch.zeros(0))], "val_data")
    with pytest.raises(HaqError, match="calibration_data batch 0 has no samples"):
        check_calibration(torch.nn.Flatten(), iter([x[:0]]))  # a generator is checked the same way


def test_non_empty_batches_pass_unchanged():
    batches = [torch.zeros(2, 3), torch.zeros(1, 3)]
    assert as_batches(batches, "calibration_data") is batches
    assert len(as_batches(iter(batches), "calibration_data")) == 2
