"""Processes that feature extraction depends on failing: the DataLoader's decoding workers, killed or out of
shared memory, give one line naming the cause and the way out; any other error of a worker keeps its
traceback. The workers are forked from this process, so a patched ImageList.__getitem__ runs in them."""
import os
import signal

import pytest
from torch.utils.data import get_worker_info

import data
from conftest import make_checkpoint, run
from features import DecodingWorkerError


def folder_run(image_folder, tmp_path):
    root, labels = image_folder
    make_checkpoint(tmp_path / 'base.pth')
    return ['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels,
            '--base_init_ckpt', tmp_path / 'base.pth', '--class_increment', 2, '--image_size', 32,
            '--num_workers', 1, '--batch_size', 4, '--save_dir', tmp_path / 'out', '--device', 'cpu']


def in_workers(monkeypatch, fault):
    """Make every image read in a DataLoader worker call ``fault`` first."""
    read = data.ImageList.__getitem__

    def getitem(self, index):
        if get_worker_info() is not None:
            fault()
        return read(self, index)
    monkeypatch.setattr(data.ImageList, '__getitem__', getitem)


def killed():
    os.kill(os.getpid(), signal.SIGKILL)        # as the kernel's out-of-memory killer does


def bus_error():
    os.kill(os.getpid(), signal.SIGBUS)         # as touching a page of a full /dev/shm does


def no_room_in_shm():
    # what torch raises in a worker when /dev/shm cannot hold a batch
    raise RuntimeError('unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)')


# torch reports a dead worker with its signal, or only as gone when it notices first through the worker's
# queue; the line then names both likely causes
@pytest.mark.parametrize('fault, fragments', [
    (killed, ['decoding worker died', 'memory runs out', '--num_workers 0']),
    (bus_error, ['decoding worker', '/dev/shm', '--num_workers 0']),
    (no_room_in_shm, ['decoding workers ran out of shared memory', '/dev/shm', '--num_workers 0'])])
def test_a_decoding_worker_killed_or_out_of_shared_memory_gives_one_line(tmp_path, image_folder, capsys, monkeypatch,
                                                                        fault, fragments):
    in_workers(monkeypatch, fault)
    code, out = run(folder_run(image_folder, tmp_path), capsys)
    lines = out.err.strip().splitlines()
    assert code == DecodingWorkerError.exit_code and len(lines) == 1 and 'Traceback' not in out.err, out.err
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_another_error_in_a_decoding_worker_keeps_its_traceback(tmp_path, image_folder, monkeypatch):
    def bug():
        raise RuntimeError('a bug in the dataset')
    in_workers(monkeypatch, bug)
    with pytest.raises(RuntimeError, match='a bug in the dataset') as raised:
        run(folder_run(image_folder, tmp_path))
    assert not isinstance(raised.value, DecodingWorkerError)
