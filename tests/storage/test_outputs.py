"""The output directory of a search: what ``force`` removes, and how its failures read."""

from __future__ import annotations

import pytest

from haq_plugin.api.errors import HaqError
from haq_plugin.storage.outputs import CHECKPOINT, prepare_output_dir


def test_force_removes_the_old_checkpoint_and_keeps_the_rest(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"old")
    (tmp_path / "policy.json").write_text("{}")
    with pytest.raises(HaqError, match="is not empty"):
        prepare_output_dir(tmp_path, resume=False, force=False)
    assert prepare_output_dir(tmp_path, resume=False, force=True) == tmp_path
    assert not (tmp_path / CHECKPOINT).exists() and (tmp_path / "policy.json").read_text() == "{}"


def test_force_on_a_checkpoint_that_cannot_be_removed_names_it(tmp_path):
    (tmp_path / CHECKPOINT).mkdir()  # unlink fails on a directory, for root too
    with pytest.raises(HaqError) as caught:
        prepare_output_dir(tmp_path, resume=False, force=True)
    message = str(caught.value)
    assert f"checkpoint {tmp_path / CHECKPOINT} failed: Is a directory" in message and "\n" not in message
