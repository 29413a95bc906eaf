"""The output directory of a search: what ``force`` removes, and how its failures read."""

from __future__ import annotations

import os
import time

import pytest

from haq_plugin.api.errors import HaqError
from haq_plugin.storage.outputs import CHECKPOINT, LOCK, UNWRITTEN_LOCK_SECONDS, OutputLock, prepare_output_dir


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


def test_an_empty_lock_file_is_taken_over_once_it_is_a_few_seconds_old(tmp_path):
    lock_file = tmp_path / LOCK
    lock_file.write_bytes(b"")  # its process died between creating the file and writing its id
    with pytest.raises(HaqError, match="Another search is running"):
        OutputLock(tmp_path).acquire()  # it may be being written right now
    old = time.time() - UNWRITTEN_LOCK_SECONDS - 1
    os.utime(lock_file, (old, old))
    lock = OutputLock(tmp_path).acquire()
    assert lock.held and lock_file.read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not lock_file.exists()


def test_entering_a_held_lock_keeps_it(tmp_path):
    lock = OutputLock(tmp_path).acquire()
    with lock:
        assert lock.held
    assert not (tmp_path / LOCK).exists()
