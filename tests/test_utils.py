"""Tests of utils.py: top-k accuracy, atomic writes, temporaries, safe loading.

utils.py: top-k accuracy by scores (README, "Differences from the original": ties among scores count against the
label, never ranked by float32 probabilities), atomic writes on a full disk or over links, stale temporaries,
background writes, and safe loading that names what it refuses."""
import argparse
import errno
import io
import math
import os

import numpy as np
import pytest
import torch

import utils
from conftest import assert_one_line_error, flip_a_data_bit, folder_args, folder_run, run, second_by_score_data
from slda_model import StreamingLDA
from utils import atomic_write, safe_torch_load, save_json, save_npy, save_tensor, topk_accuracy

CLASSES = 20            # the classes of second_by_score_data


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


@pytest.mark.parametrize('content', [b'hello', b'', b'{"muK": []}'])
def test_a_file_that_is_no_pytorch_file_is_refused_in_one_line_naming_it(tmp_path, content):
    path = tmp_path / 'notes.pth'
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f'{path} is not a PyTorch file'):
        safe_torch_load(str(path))


def test_a_model_file_with_a_flipped_bit_is_refused_naming_it_and_the_model_is_unchanged(tmp_path):
    generator = torch.Generator().manual_seed(0)
    saved = StreamingLDA(3, 4, device='cpu').fit(torch.randn(8, 3, generator=generator), torch.arange(8) % 4)
    path = saved.save_model(str(tmp_path), 'model')
    flip_a_data_bit(tmp_path / 'model.pth')
    assert not torch.equal(torch.load(path, weights_only=True)['muK'], saved.muK)        # it loads, wrong
    model = StreamingLDA(3, 4, device='cpu').fit(torch.randn(5, 3, generator=generator), torch.arange(5) % 4)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match='model.pth is damaged: the data of its record .*data/0 fails its CRC-32'):
        model.load_model(str(tmp_path), 'model')
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize('method', [8, 12, 14], ids=['deflate', 'bzip2', 'lzma'])
def test_a_damaged_compression_method_is_refused_in_one_line_naming_the_file(tmp_path, method):
    torch.save({'w': torch.arange(300)}, tmp_path / 'a.pth')
    data = bytearray((tmp_path / 'a.pth').read_bytes())
    directory = data.find(b'PK\x01\x02')                 # the central-directory entries, to the tensor's
    while not bytes(data[directory + 46:directory + 46 + int.from_bytes(data[directory + 28:directory + 30],
                                                                         'little')]).endswith(b'data/0'):
        directory = data.find(b'PK\x01\x02', directory + 4)
    data[directory + 10:directory + 12] = method.to_bytes(2, 'little')      # a compression, for stored data
    (tmp_path / 'a.pth').write_bytes(bytes(data))
    with pytest.raises(ValueError) as refused:      # unreadable, or decompressed into data that fails its CRC
        safe_torch_load(str(tmp_path / 'a.pth'))
    message = str(refused.value)
    assert '\n' not in message and (f'could not read {tmp_path / "a.pth"} as a PyTorch file' in message or
                                     f'{tmp_path / "a.pth"} is damaged' in message), message


def test_a_file_saved_without_crc32_still_loads(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({'w': torch.arange(3)}, tmp_path / 'a.pth')
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(safe_torch_load(str(tmp_path / 'a.pth'))['w'], torch.arange(3))


def test_files_in_pytorchs_zip_and_pre_1_6_formats_load(tmp_path):
    for zipped in (True, False):
        torch.save({'w': torch.arange(3)}, tmp_path / 'a.pth', _use_new_zipfile_serialization=zipped)
        assert torch.equal(safe_torch_load(str(tmp_path / 'a.pth'))['w'], torch.arange(3))


def topk_by_definition(scores, labels, k):
    """Percent of rows whose label is among the top k, written from the definition: a row is a hit when fewer than
    k other classes score at least as high as its label (a NaN anywhere in the comparison counts against it)."""
    hits = 0
    for row, label in zip(scores.tolist(), labels.tolist()):
        ahead = sum(1 for j, score in enumerate(row)
                    if j != label and (score >= row[label] or math.isnan(score) or math.isnan(row[label])))
        hits += ahead < k
    return 100 * hits / len(labels)


def test_topk_accuracy_equals_a_loop_from_the_definition_ties_included():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, size=(300, 7)).astype(np.float32))   # ties on most rows
    scores[0, 2] = float('nan')
    scores[1] = float('-inf')       # every class tied at -inf, the masked score of unseen classes
    scores[2, 5] = float('inf')
    labels = torch.from_numpy(rng.integers(0, 7, size=300))
    labels[0] = 2
    ks = (1, 2, 5, 7, 9)
    assert topk_accuracy(scores, labels, ks) == [topk_by_definition(scores, labels, k) for k in ks]
    # the definition's answer in two cases it is easy to see: a row tied everywhere is a hit only once k covers
    # every class; a label whose score is alone at the top is a hit at k = 1
    assert topk_accuracy(scores[1:2], labels[1:2], (1, 6, 7)) == [0.0, 0.0, 100.0]
    assert topk_accuracy(scores[2:3], torch.tensor([5]), (1,)) == [100.0]


def test_topk_accuracy_in_blocks_of_rows_equals_the_whole_comparison():
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.integers(0, 50, size=(130, 2048)).astype(np.float32))   # 128-row blocks: 2
    scores[70, 9] = float('nan')
    labels = torch.from_numpy(rng.integers(0, 2048, size=130))
    ahead = (~(scores < scores.gather(1, labels[:, None]))).sum(dim=1) - 1
    ks = (1, 5, 100)
    assert topk_accuracy(scores, labels, ks) == [(ahead < k).sum().item() * 100 / 130 for k in ks]


@pytest.mark.parametrize('scores, labels, message', [
    (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 'scores'),
    (torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64), 'labels'),
    (torch.zeros(2, 4), torch.tensor([0, 4]), 'labels'),
    (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 'no rows'),
])
def test_topk_accuracy_rejects_inputs_it_cannot_rank(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        topk_accuracy(scores, labels)


def test_true_class_second_by_score_is_always_in_the_top_5_though_probabilities_tie_at_zero():
    X, y, X_test, y_test = second_by_score_data()
    model = StreamingLDA(2, CLASSES, device='cpu')
    model.fit_base(X, y)
    scores = model.decision_function(X_test)
    rank = (scores > scores.gather(1, y_test.view(-1, 1))).sum(dim=1)
    assert rank.tolist() == [1] * len(y_test)          # the construction holds: one class above the label
    assert topk_accuracy(scores, y_test) == [0.0, 100.0]
    # float32 softmax: the labels' probabilities are exactly 0, tied with 18 other classes, so a ranking of the
    # probabilities is left to how topk breaks ties and misses most labels
    probabilities = model.predict_proba(X_test)
    assert ((probabilities > 0).sum(dim=1) == 1).all()
    assert (probabilities.gather(1, y_test.view(-1, 1)) == 0).all()
    assert topk_accuracy(probabilities, y_test)[1] < 100


def test_a_full_disk_while_writing_a_tensor_names_the_file_and_says_the_disk_is_full(tmp_path, capsys, monkeypatch):
    import errno

    import utils

    def failing_save(obj, f):        # a disk error that names no file, as a writer deep in a library raises it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(utils.torch, 'save', failing_save)
    code, out = run(['--num_classes', 4, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 1 and 'Traceback' not in out.err
    assert 'No space left on device' in out.err and 'preds_min_trained_0_max_trained_2.pt' in out.err


def test_background_writes_run_in_order_and_stop_at_the_first_failure(tmp_path):
    from utils import BackgroundFiles
    files = BackgroundFiles()
    done = []

    def write(name):
        if name == 'bad':
            raise OSError(errno.ENOSPC, 'No space left on device', name)
        done.append(name)

    try:
        assert files.read(lambda: 'read back').result() == 'read back'
        for name in ('a', 'b', 'bad', 'model'):
            files.write(write, name)
        files.wait()
        assert done == ['a', 'b']                     # nothing after the failed write, the model file included
        with pytest.raises(OSError, match='No space left'):
            files.write(write, 'later')
        with pytest.raises(OSError, match='No space left'):
            files.finish()
        assert done == ['a', 'b']
    finally:
        files.close()


def test_outputs_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    save = tmp_path / 'out'
    assert run(['--num_classes', 6, '--class_increment', 2, '--save_dir', save])[0] == 0
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask            # 0644 under umask 022; mkstemp alone leaves 0600
    written = [f'{kind}_min_trained_0_max_trained_{seen}.{ext}' for seen in (2, 4, 6)
               for kind, ext in (('preds', 'pt'), ('accuracies', 'json'), ('slda_model_weights', 'pth'))] + \
        ['slda_model_weights_final.pth', 'digits_train_labels.npy', 'digits_val_labels.npy']
    for name in written + ['summary.json', 'config.json']:
        assert os.stat(save / name).st_mode & 0o777 == expected, name


def test_stale_temporaries_are_told_from_live_ones():
    live = f'.x.pt.{utils.HOST}-{os.getpid()}.abc.tmp'
    dead = f'.x.pt.{utils.HOST}-{2 ** 22 + 17}.abc.tmp'          # above Linux's largest process id
    other_host = '.x.pt.elsewhere-1.abc.tmp'
    assert [utils.is_stale_temporary(name, age_seconds=10) for name in (live, dead, other_host)] == \
        [False, True, False]
    assert utils.is_stale_temporary(other_host, age_seconds=2 * 86400)


def test_temporary_files_of_killed_writes_are_removed_by_the_next_run(tmp_path, capsys):
    """Leftovers named as a killed process of this host leaves them (test_feature_cache kills one for real);
    a temporary file of a live writer in the shared cache stays."""
    argv = ['--num_classes', 4, '--save_dir', tmp_path / 'out', '--feature_cache', tmp_path / 'cache']
    assert run(argv, capsys)[0] == 0
    [key] = [name for name in os.listdir(tmp_path / 'cache') if name != 'listings']
    dead = f'{utils.HOST}-{2 ** 22 + 17}'                       # above Linux's largest process id
    leftovers = [tmp_path / 'fresh' / f'.config.json.{dead}.abcd1234.tmp',
                 tmp_path / 'cache' / key / 'train' / f'.class_00000.pt.{dead}.abcd1234.tmp',
                 tmp_path / 'cache' / 'listings' / f'.listing_0.json.{dead}.abcd1234.tmp']
    live = tmp_path / 'cache' / key / 'val' / f'.class_00000.pt.{utils.HOST}-{os.getpid()}.abcd1234.tmp'
    for path in leftovers + [live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'half a file')
    code, out = run(argv[:2] + ['--save_dir', tmp_path / 'fresh', '--feature_cache', tmp_path / 'cache'], capsys)
    assert code == 0, out.err
    assert not any(path.exists() for path in leftovers) and live.exists()


@pytest.mark.parametrize('content,fragment', [
    ('empty', 'is not a PyTorch file'), ('numpy', 'holds objects other than tensors and plain Python data'),
])
def test_an_empty_or_non_tensor_checkpoint_gives_one_line(tmp_path, image_folder, capsys, content, fragment):
    root, _ = image_folder
    ckpt = tmp_path / 'ckpt.pth'
    if content == 'empty':
        ckpt.write_bytes(b'')
    else:
        torch.save({'state_dict': np.zeros(3)}, ckpt)
    code, out = run(folder_run(root, tmp_path, '--base_init_ckpt', ckpt), capsys)
    assert_one_line_error(code, out, str(ckpt), fragment)
    assert 'could run code' not in out.err


def test_checkpoint_that_runs_code_is_refused(tmp_path, image_folder, capsys):
    root, _ = image_folder
    marker = tmp_path / 'code_ran'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    torch.save({'state_dict': {'conv1.weight': Evil()}}, tmp_path / 'evil.pth')
    argv = folder_args(root, tmp_path, '--save_dir', tmp_path / 'out')
    argv[argv.index('--base_init_ckpt') + 1] = tmp_path / 'evil.pth'
    code, out = run(argv, capsys)
    assert code == 2 and 'refusing to load' in out.err and 'evil.pth' in out.err
    assert not marker.exists()
