"""Tests of split_lists.py: --split_file lists an image folder's train and test images; every line is checked and a
bad one is one line naming it."""
import pytest

import config
from conftest import assert_one_line_error, run, write_jpeg
from errors import InputError, MissingFileError
from experiment import list_splits
from split_lists import read_split_file

# (path below the images folder, split) of the folder's images, in a deliberately unsorted file order.
LISTED = [('dog/b.jpg', 'train'), ('cat/z/deep.png', 'test'), ('cat/a.jpg', 'train'), ('dog/a.jpg', 'test'),
          ('cat/c.jpg', 'train'), ('bird/x.jpg', 'train')]


@pytest.fixture
def folder(tmp_path):
    """An ImageNet-R-like folder: class folders of images (one in a sub-folder, one not listed), and its split
    file. Returns (images folder, split file)."""
    images = tmp_path / 'imagenet-r'
    for seed, (relative, _) in enumerate(LISTED + [('bird/unlisted.jpg', None)]):
        (images / relative).parent.mkdir(parents=True, exist_ok=True)
        write_jpeg(images / relative, seed)
    split_file = tmp_path / 'split.txt'
    split_file.write_text('# ImageNet-R, a split of our own\n\n' + ''.join(f'{p}  {s}\n' for p, s in LISTED))
    return images, split_file


def test_the_split_file_gives_the_splits_classes_by_top_folder_files_sorted(folder):
    images, split_file = folder
    built = config.make_config(dataset='imagefolder', images_dir=str(images), split_file=str(split_file),
                               image_size=16)
    splits = list_splits(built)
    assert splits.classes == ['bird', 'cat', 'dog'] and splits.test_name == 'test'
    assert [splits.train.image_name(i) for i in range(len(splits.train))] == \
        ['bird/x.jpg', 'cat/a.jpg', 'cat/c.jpg', 'dog/b.jpg']
    assert splits.train.labels.tolist() == [0, 1, 1, 2]
    assert [splits.test.image_name(i) for i in range(len(splits.test))] == ['cat/z/deep.png', 'dog/a.jpg']
    assert splits.test.labels.tolist() == [1, 2]
    image, _, ok = splits.test[0]
    assert ok and image.shape == (3, 16, 16)
    assert built.results_settings()['data.options.split_file'] == str(split_file)


def test_a_split_file_starting_with_a_byte_order_mark_reads_as_without(folder):
    images, split_file = folder
    plain = read_split_file(str(split_file), str(images))
    split_file.write_bytes(b'\xef\xbb\xbf' + split_file.read_bytes().replace(b'# ImageNet-R, a split of our own\n\n', b''))
    assert read_split_file(str(split_file), str(images)) == plain


@pytest.mark.parametrize('line, why', [
    ('cat/a.jpg', 'expected "<image path relative to --images_dir> train|test"'),
    ('cat/a.jpg val', "the split must be train or test, got 'val'"),
    ('cat/missing.jpg train', 'missing.jpg does not exist'),
    ('../outside/a.jpg train', 'is outside --images_dir'),
    ('cat/../../a.jpg test', 'is outside --images_dir'),
    ('/etc/a.jpg train', 'is outside --images_dir'),
    ('top.jpg train', 'top.jpg is in no class folder'),
    ('cat/notes.txt train', 'cat/notes.txt is not an image file by its extension'),
    ('./cat/a.jpg test', 'cat/a.jpg is listed already, on line 5'),
])
def test_a_bad_line_is_an_error_naming_the_file_and_the_line(folder, line, why):
    images, split_file = folder
    (images / 'cat' / 'notes.txt').write_text('')
    split_file.write_text(split_file.read_text() + line + '\n')
    with pytest.raises(InputError) as refused:
        read_split_file(str(split_file), str(images))
    assert str(refused.value).startswith(f'--split_file {split_file} line 9: ') and why in str(refused.value), \
        str(refused.value)


def test_the_command_line_says_it_in_one_line(folder, tmp_path, capsys):
    images, split_file = folder
    split_file.write_text('dog/a.jpg train\ndog/b.jpg training\n')
    code, out = run(['--dataset', 'imagefolder', '--images_dir', images, '--split_file', split_file,
                     '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, f'--split_file {split_file} line 2:', "got 'training'")


def test_a_missing_file_and_a_class_without_training_images_are_named(folder, tmp_path):
    images, split_file = folder
    with pytest.raises(MissingFileError, match='--split_file .*nothing.txt not found'):
        read_split_file(str(tmp_path / 'nothing.txt'), str(images))
    split_file.write_text('cat/a.jpg train\ndog/a.jpg test\n')
    built = config.make_config(dataset='imagefolder', images_dir=str(images), split_file=str(split_file))
    with pytest.raises(InputError, match='lists test images but no training image of class\\(es\\) dog'):
        list_splits(built)


@pytest.mark.parametrize('kept, missing', [('train', 'test'), ('test', 'train')])
def test_a_file_without_test_or_training_images_is_refused(folder, kept, missing):
    images, split_file = folder
    split_file.write_text(''.join(f'{p} {s}\n' for p, s in LISTED if s == kept))
    with pytest.raises(InputError, match=f'lists no {missing} image: it needs lines ending in train and in test'):
        read_split_file(str(split_file), str(images))


def test_a_test_folder_beside_a_split_file_is_refused_naming_both(folder, tmp_path, capsys):
    """--test_split names a folder the split file replaces: one of the two would be silently ignored."""
    images, split_file = folder
    code, out = run(['--dataset', 'imagefolder', '--images_dir', images, '--split_file', split_file,
                     '--test_split', 'test', '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--test_split test names a test folder', f'--split_file {split_file}')
    code, out = run(['--dataset', 'imagefolder', '--images_dir', images, '--split_file', split_file,
                     '--test_split', 'val', '--save_dir', tmp_path / 'out'], capsys)   # the default, given
    assert_one_line_error(code, out, '--test_split val names a test folder', f'--split_file {split_file}')
    assert not (tmp_path / 'out').exists()


def test_a_batch_without_any_test_image_is_refused_before_any_work(folder, tmp_path, capsys):
    """bird, first in sorted class order, has training images only: the first batch could not be scored."""
    images, split_file = folder
    code, out = run(['--dataset', 'imagefolder', '--images_dir', images, '--split_file', split_file,
                     '--class_increment', 1, '--base_init_classes', 1, '--weights', 'none', '--image_size', 32,
                     '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, 'batch 1 (1 class seen) has no test image', 'accuracy is undefined')
    assert not (tmp_path / 'out').exists()
