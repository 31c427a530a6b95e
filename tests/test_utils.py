"""Atomic writes on a full disk or over links, and safe loading that names what it refuses."""
import argparse
import errno
import io
import os

import numpy as np
import pytest
import torch

import utils
from utils import atomic_write, safe_torch_load, save_json, save_npy, save_tensor


class FillingDisk(io.RawIOBase):
    """A file on a disk with room for ``room`` more bytes: writing past them fails with ENOSPC, as write(2) does
    (the error names no file)."""

    def __init__(self, file, room):
        self.file = file
        self.room = room

    def writable(self):
        return True

    def fileno(self):
        return self.file.fileno()

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def close(self):
        self.file.close()
        super().close()


@pytest.fixture
def disk_with_room(monkeypatch):
    """Call with a number of bytes: files that atomic_write opens from then on fill the disk after them."""
    real_fdopen = os.fdopen

    def fill_after(room):
        monkeypatch.setattr(os, 'fdopen', lambda fd, mode: io.BufferedWriter(
            FillingDisk(real_fdopen(fd, mode, buffering=0), room), buffer_size=4096))
    return fill_after


@pytest.mark.parametrize('room', [0, 1000, 100_000])
def test_torch_save_on_a_full_disk_names_the_file_and_says_so(tmp_path, disk_with_room, room):
    path = tmp_path / 'weights.pth'
    disk_with_room(room)
    with pytest.raises(OSError) as raised:
        save_tensor(str(path), {'w': torch.arange(50_000, dtype=torch.float32)})       # 200 kB
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert 'No space left' in str(raised.value)
    assert os.listdir(tmp_path) == []        # neither the file nor its temporary


@pytest.mark.parametrize('save, value', [(save_json, {'a': list(range(3000))}), (save_npy, np.zeros(5000))])
def test_any_write_on_a_full_disk_names_the_file(tmp_path, disk_with_room, save, value):
    path = tmp_path / 'out'
    disk_with_room(100)
    with pytest.raises(OSError) as raised:
        save(str(path), value)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert os.listdir(tmp_path) == []


def test_other_torch_save_failures_keep_their_error(tmp_path, monkeypatch):
    def broken(obj, f):
        raise RuntimeError('a bug, not the disk')
    monkeypatch.setattr(torch, 'save', broken)
    with pytest.raises(RuntimeError, match='a bug, not the disk'):
        save_tensor(str(tmp_path / 'x.pt'), torch.zeros(1))


def test_atomic_write_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    target = tmp_path / 'precious.txt'
    target.write_text('keep me')
    (tmp_path / 'out.json').symlink_to(target)
    save_json(str(tmp_path / 'out.json'), {'a': 1})
    assert target.read_text() == 'keep me'
    assert not os.path.islink(tmp_path / 'out.json')
    assert utils.load_json(str(tmp_path / 'out.json')) == {'a': 1}


def test_written_file_is_complete_and_readable(tmp_path):
    atomic_write(str(tmp_path / 'a.bin'), lambda f: f.write(b'x' * 10_000))
    assert (tmp_path / 'a.bin').read_bytes() == b'x' * 10_000


@pytest.mark.parametrize('obj, name', [(argparse.Namespace(lr=0.1), 'argparse.Namespace'),
                                       (np.float64(1.5), 'numpy')])
def test_a_checkpoint_with_objects_other_than_tensors_is_refused_naming_the_object(tmp_path, obj, name):
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'args': obj}, path)
    with pytest.raises(ValueError) as raised:
        safe_torch_load(str(path))
    message = str(raised.value)
    assert str(path) in message and name in message
    assert '\x1b[' not in message       # no terminal escape codes from PyTorch's message
