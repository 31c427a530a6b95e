"""Bad input of every kind ends in one clear line on standard error and a non-zero exit (or, with
--skip_bad_images, a skip and a listing), never a traceback; and runs leave no litter."""
import errno
import json
import os

import numpy as np
import pytest
import torch

import data
import utils
from conftest import SYNSETS, make_checkpoint, run

SMALL = ['--class_increment', 3, '--image_size', 32, '--num_workers', 0]


def folder_run(root, tmp_path, *extra, name='out'):
    return ['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', tmp_path / name] + SMALL + list(extra)


def assert_one_line_error(code, out, *fragments, exit_code=2):
    assert code == exit_code, out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in out.err, out.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_images_over_the_pixel_limit_are_bad_images(tmp_path, image_folder, capsys, monkeypatch):
    root, _ = image_folder
    monkeypatch.setattr(data, 'MAX_IMAGE_PIXELS', 1000)       # the tree's images have 40 x 30 = 1,200 pixels
    big = root / 'train' / SYNSETS[0] / f'{SYNSETS[0]}_0000.JPEG'
    code, out = run(folder_run(root, tmp_path), capsys)
    assert_one_line_error(code, out, f'cannot read image {big}', 'more than 1,000 pixels')
    code, out = run(folder_run(root, tmp_path, '--skip_bad_images', name='skipped'), capsys)
    assert code == 2 and 'every image of class n01000001 in train' in out.err    # every image is over the limit
    from PIL import Image
    monkeypatch.setattr(data, 'MAX_IMAGE_PIXELS', 10 ** 9)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 500)        # PIL's own decompression-bomb error
    code, out = run(folder_run(root, tmp_path, name='bomb'), capsys)
    assert_one_line_error(code, out, f'cannot read image {big}')


def test_a_file_name_that_is_not_utf8_works_with_the_feature_cache(tmp_path, image_folder, capsys):
    root, _ = image_folder
    folder = os.fsencode(root / 'train' / SYNSETS[0])
    source = os.path.join(folder, f'{SYNSETS[0]}_0000.JPEG'.encode())
    os.rename(source, os.path.join(folder, b'caf\xe9.JPEG'))       # Latin-1, not UTF-8
    code, out = run(folder_run(root, tmp_path, '--feature_cache', tmp_path / 'cache'), capsys)
    assert code == 0, out.err
    order = (tmp_path / 'out' / 'stream_order.txt').read_bytes()
    assert b'caf\xe9.JPEG' in order


@pytest.mark.parametrize('decode_on_device', [False, True])
def test_a_batch_of_only_bad_images_is_skipped(tmp_path, image_folder, capsys, decode_on_device):
    root, _ = image_folder
    bad = root / 'train' / SYNSETS[1] / f'{SYNSETS[1]}_0003.JPEG'      # the class's last image: a batch of its own
    bad.write_bytes(b'not an image')
    extra = ['--skip_bad_images', '--batch_size', 1] + (['--decode_on_device'] if decode_on_device else [])
    code, out = run(folder_run(root, tmp_path, *extra), capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['skipped_images'] == [str(bad)]


@pytest.mark.parametrize('argv,fragment', [
    (['--device', 'tpu'], '--device tpu'),
    (['--device', 'mps'], '--device mps'),
    (['--image_size', 0], '--image_size must be a whole number of at least 1'),
    (['--image_size', -5], '--image_size must be a whole number of at least 1'),
    (['--num_workers', -1], '--num_workers must be a whole number of at least 0'),
    (['--shuffle_data', '--seed', 10 ** 30], '--seed must be'),
    (['--ordering', 'class_iid', '--ordering_seed', -1], '--ordering_seed must be'),
    (['--weights', 'IMAGENET1K_V1', '--arch', 'resnet19'], 'arch resnet19 is not a torchvision'),
    (['--feature_cache', '{file}'], '--feature_cache {file} is a file'),
])
def test_bad_flags_give_one_line(tmp_path, image_folder, capsys, argv, fragment):
    root, _ = image_folder
    (tmp_path / 'a_file').write_text('x')
    argv = [str(a).format(file=tmp_path / 'a_file') for a in argv]
    code, out = run(folder_run(root, tmp_path, *argv), capsys)
    assert_one_line_error(code, out, fragment.format(file=tmp_path / 'a_file'))


@pytest.mark.parametrize('content,fragment', [
    ('npz', 'is not a .npy array'), ('text', 'is not a .npy array'),
])
def test_a_label_file_that_is_not_npy_gives_one_line(tmp_path, image_folder, capsys, content, fragment):
    root, labels = image_folder
    path = labels / 'imagenet_train_labels.npy'
    if content == 'npz':
        with open(path, 'wb') as f:
            np.savez(f, labels=np.zeros(3))
    else:
        path.write_text('3 0 5 1 4 2\n')
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    code, out = run(['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels, '--base_init_ckpt', ckpt,
                     '--save_dir', tmp_path / 'out'] + SMALL, capsys)
    assert_one_line_error(code, out, str(path), fragment)


@pytest.mark.parametrize('content,fragment', [
    ('empty', 'could not read'), ('numpy', 'holds objects other than tensors and plain Python data'),
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


def test_a_cache_entry_of_another_width_is_extracted_again(tmp_path, image_folder, capsys):
    root, _ = image_folder
    cache = tmp_path / 'cache'
    assert run(folder_run(root, tmp_path, '--feature_cache', cache, name='fill'), capsys)[0] == 0
    [key] = [name for name in os.listdir(cache) if name != 'listings']
    path = cache / key / 'train' / 'class_00001.pt'
    entry = torch.load(path, weights_only=True)
    entry['features'] = entry['features'][:, :256]
    torch.save(entry, path)
    code, out = run(folder_run(root, tmp_path, '--feature_cache', cache, name='again'), capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'again' / 'summary.json').read_text())['images_extracted_this_process'] == 4


def test_a_full_disk_while_writing_a_tensor_names_the_file_and_says_the_disk_is_full(tmp_path, capsys, monkeypatch):
    import errno

    import utils

    def failing_save(obj, f):        # a disk error that names no file, as a writer deep in a library raises it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(utils.torch, 'save', failing_save)
    code, out = run(['--num_classes', 4, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 1 and 'Traceback' not in out.err
    assert 'No space left on device' in out.err and 'preds_min_trained_0_max_trained_2.pt' in out.err


def test_a_symlink_loop_is_named_before_any_work(tmp_path, image_folder, capsys):
    root, _ = image_folder
    os.symlink(root / 'train' / SYNSETS[2], root / 'train' / SYNSETS[2] / 'loop')
    code, out = run(folder_run(root, tmp_path), capsys)
    assert_one_line_error(code, out, str(root / 'train' / SYNSETS[2] / 'loop'), 'leads back to')
    assert 'finished increments' not in out.err


def test_a_read_only_cache_works_with_cache_check_listing(tmp_path, image_folder, capsys, monkeypatch):
    root, _ = image_folder
    cache = tmp_path / 'cache'
    assert run(folder_run(root, tmp_path, '--feature_cache', cache, name='fill'), capsys)[0] == 0

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, 'Permission denied', path)

    monkeypatch.setattr(data, 'save_json', read_only)
    code, out = run(folder_run(root, tmp_path, '--feature_cache', cache, '--cache_check', 'listing', name='ro'),
                    capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'ro' / 'summary.json').read_text())['images_extracted_this_process'] == 0


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


def test_every_image_of_a_class_unreadable_names_the_class_folder(tmp_path, image_folder, capsys):
    root, _ = image_folder
    for path in (root / 'train' / SYNSETS[3]).iterdir():
        path.write_bytes(b'broken')
    code, out = run(folder_run(root, tmp_path, '--skip_bad_images'), capsys)
    assert_one_line_error(code, out, f'every image of class {SYNSETS[3]} in train is unreadable',
                          str(root / 'train' / SYNSETS[3]))


def test_stale_temporaries_are_told_from_live_ones():
    live = f'.x.pt.{utils.HOST}-{os.getpid()}.abc.tmp'
    dead = f'.x.pt.{utils.HOST}-{2 ** 22 + 17}.abc.tmp'          # above Linux's largest process id
    other_host = '.x.pt.elsewhere-1.abc.tmp'
    assert [utils.is_stale_temporary(name, age_seconds=10) for name in (live, dead, other_host)] == \
        [False, True, False]
    assert utils.is_stale_temporary(other_host, age_seconds=2 * 86400)
