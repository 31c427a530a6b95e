"""Image datasets whose split is published as a list of files rather than as two folders (ImageNet-R, CUB-200 and
others): ``--split_file FILE`` with ``--dataset imagefolder``.

The file has a line per image: its path relative to the images folder, whitespace, and ``train`` or ``test``
(``images/n01443537/art_0.jpg train``). Blank lines and lines starting with ``#`` are skipped. The class of an
image is the first folder of its path; classes are sorted by name, a class's images by their whole path below the
class folder (for images in sub-folders of a class folder that differs from an ImageFolder's order, which lists a
folder's own files before its sub-folders'). A byte-order mark at the start of the file is ignored. Every line is
checked before any image is read, and the first bad one is an error naming the file and the line number.
"""
import os
import posixpath

from data import IMG_EXTENSIONS, ImageList, Preprocessing, SplitPair
from errors import InputError, MissingFileError

SPLITS = ('train', 'test')


def read_split_file(path, images_dir):
    """{'train': [path, ...], 'test': [...]}: the paths of ``path``'s lines (relative to ``images_dir``, with
    '/' separators, normalised), in file order. Raises MissingFileError when the file is missing, InputError naming
    the line for a line that is not '<path> train|test', a path that is absolute or leaves ``images_dir``, that has
    no class folder, that is not an image file by its extension, that is missing, or that an earlier line gave."""
    try:
        with open(path, encoding='utf-8-sig') as f:        # Windows editors start UTF-8 files with a BOM
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise MissingFileError(f'--split_file {path} not found') from None
    except UnicodeDecodeError as e:
        raise InputError(f'--split_file {path} is not UTF-8 text ({e.reason} at byte {e.start})') from None
    splits = {name: [] for name in SPLITS}
    seen = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith('#'):
            continue

        def refuse(why):
            return InputError(f'--split_file {path} line {number}: {why}')
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise refuse(f'expected "<image path relative to --images_dir> train|test", got {text!r}')
        relative, split = parts
        if split not in SPLITS:
            raise refuse(f'the split must be train or test, got {split!r}')
        normalised = posixpath.normpath(relative)
        if posixpath.isabs(normalised) or normalised == '..' or normalised.startswith('../'):
            raise refuse(f'{relative} is outside --images_dir {images_dir}: paths are relative to it')
        if '/' not in normalised:
            raise refuse(f'{relative} is in no class folder: an image\'s class is the first folder of its path')
        if not normalised.lower().endswith(IMG_EXTENSIONS):
            raise refuse(f'{relative} is not an image file by its extension ({", ".join(IMG_EXTENSIONS)})')
        if not os.path.isfile(os.path.join(images_dir, normalised)):
            raise refuse(f'{os.path.join(images_dir, normalised)} does not exist')
        if normalised in seen:
            raise refuse(f'{relative} is listed already, on line {seen[normalised]}')
        seen[normalised] = number
        splits[split].append(normalised)
    for split in ('train', 'test'):
        if not splits[split]:
            raise InputError(f'--split_file {path} lists no {split} image: it needs lines ending in train and in '
                             f'test')
    return splits


def split_file_splits(name, images_dir, path, preprocessing=Preprocessing(), list_class=ImageList,
                      decoder_description='PIL'):
    """The train and test splits of the images of ``images_dir`` that the split file ``path`` lists
    (``read_split_file``), built by ``list_class`` with ``preprocessing`` (a data.Preprocessing) as
    ``data.image_folder_splits`` builds them, with the classes of the file's images. Raises MissingFileError for a missing folder or file, InputError for a bad line (naming it)
    or a class with no training image."""
    if not os.path.isdir(images_dir):
        raise MissingFileError(f'images_dir {images_dir} does not exist or is not a folder; it must hold the class '
                               f'folders of the images --split_file {path} lists')
    splits = read_split_file(path, images_dir)
    files = {split: {} for split in SPLITS}       # {split: {class: [name below the class folder]}}
    for split, paths in splits.items():
        for relative in paths:
            class_name, _, below = relative.partition('/')
            files[split].setdefault(class_name, []).append(below)
    classes = sorted(set(files['train']) | set(files['test']))
    untrained = [class_name for class_name in classes if class_name not in files['train']]
    if untrained:
        raise InputError(f'--split_file {path} lists test images but no training image of class(es) '
                         f'{", ".join(untrained[:5])}')
    made = {split: list_class(images_dir, classes, ['\n'.join(sorted(files[split].get(class_name, [])))
                                                     for class_name in classes], preprocessing)
            for split in SPLITS}
    return SplitPair(name, classes, made['train'], made['test'],
                     f'split file, decoded by {decoder_description}, {preprocessing.describe()}', 'test',
                     os.path.realpath(images_dir))
