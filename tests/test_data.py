"""Tests of data.py: listing and reading images, the CORe50 split.

data.py: listing image folders (torchvision's order, saved listings, symbolic link loops, empty classes), the
CORe50 split, the pixel pipeline and its limit."""
import errno
import json
import os
import re
from collections import Counter

import numpy as np
import pytest
import torch

import data
from conftest import SYNSETS, age_folders, assert_one_line_error, folder_run, imagenet_argv, run
from core50_folder import KEPT_FRAMES, OBJECTS, build_core50, parse


@pytest.fixture(scope='module')
def core50(tmp_path_factory):
    """The CORe50-shaped folder of core50_folder.build_core50."""
    return build_core50(tmp_path_factory.mktemp('core50') / 'core50_128x128'), None


def test_split_sessions_frames_labels_and_clips(core50):
    root, _ = core50
    splits = data.core50_splits(str(root), data.Preprocessing().at_size(32))
    assert splits.classes == list(data.CORE50_CATEGORIES) and splits.test_name == 'test'
    for split, sessions in ((splits.train, {1, 2, 4, 5, 6, 8, 9, 11}), (splits.test, {3, 7, 10})):
        names = [split.image_name(i) for i in range(len(split))]
        parsed = [parse(name) for name in names]
        assert {session for session, _, _ in parsed} == sessions
        assert Counter(frame for _, _, frame in parsed) == {frame: len(sessions) * len(OBJECTS)
                                                            for frame in KEPT_FRAMES}
        assert all(name == os.path.join(f's{s}', f'o{o}', f'C_{s:02d}_{o:02d}_{f:03d}.png')
                   for name, (s, o, f) in zip(names, parsed))
        assert split.labels.tolist() == [(obj - 1) // 5 for _, obj, _ in parsed]
        # a clip is one session's recording of one object, its frames contiguous and in temporal order
        clip_of = {}
        for clip, (session, obj, _) in zip(split.clips.tolist(), parsed):
            assert clip_of.setdefault(clip, (session, obj)) == (session, obj)
        assert len(clip_of) == len(sessions) * len(OBJECTS)
        for clip in clip_of:
            frames = [parsed[i][2] for i in np.flatnonzero(split.clips == clip)]
            assert frames == KEPT_FRAMES and np.ptp(np.flatnonzero(split.clips == clip)) == len(KEPT_FRAMES) - 1
    assert len(splits.train) == 8 * 10 * 3 and len(splits.test) == 3 * 10 * 3
    objects = data.core50_splits(str(root), data.Preprocessing().at_size(32), labels='object', frame_stride=40)   # frames 20, 60, ...
    assert objects.classes == [f'o{o}' for o in OBJECTS] and objects.train.labels.max() == len(OBJECTS) - 1
    assert {parse(objects.train.image_name(i))[2] for i in range(len(objects.train))} == {20}


def test_missing_session_is_named(tmp_path):
    (tmp_path / 's1').mkdir()
    with pytest.raises(FileNotFoundError, match=r's2 is missing.*sessions 1, 2, 4, 5, 6, 8, 9, 11'):
        data.core50_splits(str(tmp_path))


def test_uint8_pipeline_equals_torchvision_to_tensor_and_normalize():
    from PIL import Image
    from torchvision import transforms
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])(image)
    as_bytes = data.folder_transform(data.Preprocessing())(image)
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == (3, 224, 224)
    assert torch.equal(data.normalize(as_bytes.unsqueeze(0))[0], reference)


def test_listing_matches_torchvision_image_folder_order(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    root = tmp_path / 'split'
    layout = {'cat': ['b.JPEG', 'a.png', 'notes.txt', 'D.JPG', 'sub/z.jpeg', 'sub-x/y.jpeg', 'sub/deeper/w.jpeg',
                      'sub.d/v.JPEG'],
              'dog': ['only.webp'],
              'elsewhere': ['linked.jpg']}
    for folder, names in layout.items():
        for name in names:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(b'')
    os.symlink(root / 'elsewhere', root / 'cat' / 'link')           # ImageFolder follows linked folders
    os.symlink(root / 'dog', root / 'cow')
    (root / 'stray.jpg').write_bytes(b'')
    classes, class_to_idx = find_classes(root)
    assert data.list_classes(root) == classes == ['cat', 'cow', 'dog', 'elsewhere']
    assert data.IMG_EXTENSIONS == IMG_EXTENSIONS
    samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    class_files, _ = data.list_split(str(root), classes, {})
    images = data.ImageList(str(root), classes, class_files, data.Preprocessing().at_size(32))
    ours = [images.describe(i) for i in range(len(images))]
    assert ours == [path for path, _ in samples] and images.labels.tolist() == [label for _, label in samples]
    assert os.path.join(root, 'cat', 'link', 'linked.jpg') in ours and not any(p.endswith('.txt') for p in ours)
    (root / 'dog' / 'two\nlines.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match=r"two\\nlines.jpg'.*line break.*rename"):
        data.list_split(str(root), classes, {})


def test_saved_listing_is_reused_only_while_every_folder_of_a_class_is_unchanged(tmp_path):
    root = tmp_path / 'train'
    for relative in ('a/1.jpg', 'a/2.jpg', 'a/sub/3.jpg', 'b/4.jpg', 'b/5.jpg'):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b'')
    classes = ['a', 'b']
    hour = 3600 * 10 ** 9

    def later(hours):
        """A clock this many hours after the folders' latest change, as if that much time had passed."""
        return max(os.stat(folder).st_mtime_ns for folder, _, _ in os.walk(root)) + hours * hour

    def fresh():
        return ['\n'.join(data.list_image_files(os.path.join(root, name))[0]) for name in classes]

    def hide_change(folder, since):
        """Put ``folder``'s modification time back to what it was, so that only a kept listing misses a change."""
        os.utime(folder, ns=(since, since))

    files, listing = data.list_split(str(root), classes, {}, now_ns=later(1))
    assert files == fresh() and sorted(listing) == classes
    # a rename whose folder time is put back: a reused listing still shows the old name, a fresh one the new
    a_time = os.stat(root / 'a').st_mtime_ns
    os.rename(root / 'a' / '1.jpg', root / 'a' / '0.jpg')
    hide_change(root / 'a', a_time)
    again, _ = data.list_split(str(root), classes, listing, now_ns=later(1))
    assert again == files and '1.jpg' in again[0].split('\n')
    assert '0.jpg' in fresh()[0].split('\n')
    # a file added in a sub-folder, and one removed: both classes' folders changed, both listed again
    (root / 'a' / 'sub' / '6.jpg').write_bytes(b'')
    (root / 'b' / '4.jpg').unlink()
    files, listing = data.list_split(str(root), classes, listing, now_ns=later(0))
    assert files == fresh()
    assert os.path.join('sub', '6.jpg') in files[0].split('\n') and files[1] == '5.jpg'
    assert listing == {}                       # changed within the last seconds: not kept
    files, listing = data.list_split(str(root), classes, {}, now_ns=later(1))
    assert sorted(listing) == classes
    # a new sub-folder: its parent's time changes, so class b is listed again and a is still reused
    a_time = os.stat(root / 'a').st_mtime_ns
    os.rename(root / 'a' / '2.jpg', root / 'a' / '7.jpg')
    hide_change(root / 'a', a_time)
    (root / 'b' / 'new_folder').mkdir()
    (root / 'b' / 'new_folder' / '8.jpg').write_bytes(b'')
    files, _ = data.list_split(str(root), classes, listing, now_ns=later(1))
    assert files[1] == fresh()[1] and os.path.join('new_folder', '8.jpg') in files[1].split('\n')
    assert files[0] != fresh()[0] and '2.jpg' in files[0].split('\n')


def test_listing_file_of_image_folder_splits_is_reused_and_a_damaged_one_ignored(tmp_path, image_folder):
    root, _ = image_folder
    age_folders(root)
    listings = tmp_path / 'listings'
    first = data.image_folder_splits('imagenet', str(root), listing_dir=str(listings))
    [name] = os.listdir(listings)
    saved = json.loads((listings / name).read_text())
    assert sorted(saved) == ['train', 'val'] and len(saved['train']) == len(SYNSETS)
    modified = (listings / name).stat().st_mtime_ns
    again = data.image_folder_splits('imagenet', str(root), listing_dir=str(listings))
    assert again.train.class_files == first.train.class_files and again.test.class_files == first.test.class_files
    assert (listings / name).stat().st_mtime_ns == modified                 # unchanged, so not rewritten
    for damage in ('{"train": {"n01000001": [{}, 3]}}', 'not json', '[1, 2]'):
        (listings / name).write_text(damage)
        again = data.image_folder_splits('imagenet', str(root), listing_dir=str(listings))
        assert again.train.class_files == first.train.class_files and json.loads((listings / name).read_text()) == saved


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


def test_a_symlink_loop_is_named_before_any_work(tmp_path, image_folder, capsys):
    root, _ = image_folder
    os.symlink(root / 'train' / SYNSETS[2], root / 'train' / SYNSETS[2] / 'loop')
    code, out = run(folder_run(root, tmp_path), capsys)
    assert_one_line_error(code, out, str(root / 'train' / SYNSETS[2] / 'loop'), 'leads back to')
    assert 'finished increments' not in out.err


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


def test_a_class_folder_with_no_images_is_one_line_naming_it(tmp_path, image_folder, capsys):
    root, _ = image_folder
    for f in (root / 'val' / 'n01000002').iterdir():
        f.unlink()
    code, out = run(imagenet_argv(tmp_path, root, None), capsys)     # label files' lengths would differ
    assert_one_line_error(code, out, str(root / 'val'), 'n01000002')
    assert re.search(r'class folder\(s\) with no images in .*val: n01000002', out.err), out.err   # its wording


def test_a_missing_test_folder_suggests_test_split_when_another_folder_is_there(tmp_path, image_folder, capsys):
    root, _ = image_folder
    os.rename(root / 'val', root / 'test')          # a train/ + test/ layout
    (root / '.cache').mkdir()                       # hidden folders are no test split to suggest
    code, out = run(folder_run(root, tmp_path), capsys)
    assert_one_line_error(code, out, f'{root / "val"} is missing', 'to test on test/, give --test_split test')
    code, out = run(folder_run(root, tmp_path, '--test_split', 'test'), capsys)
    assert code == 0, out.err


@pytest.mark.parametrize('mode', ['I;16', 'I'])
def test_a_16_bit_grayscale_image_is_scaled_to_8_bits_not_clipped_white(tmp_path, mode):
    # PIL's convert('RGB') clips 16-bit values at 255: a 16-bit ramp came out [0, 255, 255, ...]
    from PIL import Image
    folder = tmp_path / 'train' / 'c'
    folder.mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    wide = Image.fromarray(ramp) if mode == 'I;16' else Image.fromarray(ramp.astype(np.int32), 'I')
    assert wide.mode == mode
    wide.save(folder / 'wide.png' if mode == 'I;16' else folder / 'wide.tif')
    Image.fromarray((ramp // 257).astype(np.uint8)).save(folder / 'narrow.png')
    name = 'wide.png' if mode == 'I;16' else 'wide.tif'
    images = data.ImageList(str(tmp_path / 'train'), ['c'], [f'{name}\nnarrow.png'], data.Preprocessing(16, 16),
                            make_transform=data.square_transform)
    (wide_pixels, _, wide_ok), (narrow_pixels, _, narrow_ok) = images[0], images[1]
    assert wide_ok and narrow_ok
    assert torch.equal(wide_pixels, narrow_pixels)
    assert wide_pixels[0, 0].tolist() == list(range(0, 256, 17))
