"""Checkpoint files: a failed write (a full disk) leaves nothing behind and says why; temporary
files of killed writes are cleaned up; empty files are named as such."""

import errno
import subprocess
import sys

import pytest
import torch

from dino_lite import checkpoint
from dino_lite.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_a_full_disk_removes_the_partial_file_and_names_path_and_free_space(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def full_disk(obj, f):                   # writes part of the file, then the disk is full
        with open(f, "wb") as fh:
            fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {path}: the disk is full "
                                              rf"\(\d+ MiB free on {tmp_path}\)"):
        save_checkpoint({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]   # no partial file
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1                                # the last one is kept


def test_temp_files_of_killed_writes_are_removed_at_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                       # a pid that no longer runs
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / f".checkpoint.pt.tmp{dead.pid}"
    live = tmp_path / f".checkpoint.pt.tmp{subprocess.os.getppid()}"   # a running writer's
    other = tmp_path / ".other.pt.tmp1"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_checkpoint({"step": 3}, path)
    assert not stale.exists() and live.exists() and other.exists()
    assert load_checkpoint(path)["step"] == 3


def test_an_empty_checkpoint_file_is_named_as_such(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*d\.pt: \S"):
        load_checkpoint(tmp_path / "d.pt")


def test_torch_save_writes_plain_tensors(tmp_path):
    save_checkpoint({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))
