"""CIFAR-100 and CIFAR-10 from the "python version" releases on local disk (Krizhevsky 2009, www.cs.toronto.edu/~kriz/
cifar.html); nothing is downloaded.

    cifar-100-python/       train, test, meta
    cifar-10-batches-py/    data_batch_1 ... data_batch_5, test_batch, batches.meta

Each file is a pickled dict, written by Python 2: ``data``, a uint8 array (n, 3072) of 32x32 images (the red
plane, then green, then blue, each row-major), the labels (``fine_labels`` for CIFAR-100, ``labels`` for CIFAR-10,
lists of ints) and, in the meta files, the class names (``fine_label_names``, ``label_names``). Pickle files are
untrusted input: they are read by ``load_pickle``, an unpickler that builds nothing but dicts, lists, strings,
numbers and the NumPy uint8 arrays of these files, and refuses any other object without creating it.
"""
import hashlib
import os
import pickle
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data import Preprocessing, SplitPair, class_rows, format_triple, square_transform
from errors import InputError, MissingFileError

IMAGE_SIDE = 32


@dataclass(frozen=True)
class Release:
    """The files of one release: its folder's name, the training and test files, the meta file, and the keys of the
    labels and of the class names."""
    name: str
    folder: str
    train_files: tuple
    test_files: tuple
    meta_file: str
    labels_key: str
    names_key: str
    num_classes: int


RELEASES = {
    'cifar100': Release('CIFAR-100', 'cifar-100-python', ('train',), ('test',), 'meta', 'fine_labels',
                        'fine_label_names', 100),
    'cifar10': Release('CIFAR-10', 'cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)),
                       ('test_batch',), 'batches.meta', 'labels', 'label_names', 10),
}


class RefusedPickleError(InputError):
    """A pickle file that holds something other than the plain data and uint8 arrays of the CIFAR files."""


# The only objects a CIFAR file refers to, by the names Python 2's pickle wrote, and NumPy 2 writes (numpy._core):
# the functions and the two types NumPy's own pickling of an array uses (_frombuffer: pickle protocol 5, a file
# pickled again by Python 3). Nothing else is built.
_reconstruct = np.zeros(0).__reduce__()[0]
_frombuffer = np.zeros(0).__reduce_ex__(5)[0]
ALLOWED_GLOBALS = {(f'numpy.{core}.{module}', function.__name__): function for core in ('core', '_core')
                   for module, function in (('multiarray', _reconstruct), ('numeric', _frombuffer))}
ALLOWED_GLOBALS.update({('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are ALLOWED_GLOBALS; any other raises RefusedPickleError naming it, before
    anything of it is imported or called. ``path`` names the file in messages."""

    def __init__(self, file, path):
        super().__init__(file, encoding='bytes')
        self.path = path

    def find_class(self, module, name):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedPickleError(f'refusing to load {self.path}: it refers to {module}.{name}, which a CIFAR '
                                     f'file does not hold (only dicts, lists, strings, numbers and uint8 arrays '
                                     f'are read)')
        return allowed

    def persistent_load(self, pid):
        raise RefusedPickleError(f'refusing to load {self.path}: it holds a persistent reference, which a CIFAR '
                                 f'file does not')


def load_pickle(path):
    """The dict pickled in ``path``, its keys as str, read with RestrictedUnpickler. Raises MissingFileError when
    the file is missing, RefusedPickleError for any object other than dicts, lists, strings, numbers and NumPy
    arrays, InputError when it is not a pickle of a dict."""
    try:
        with open(path, 'rb') as f:
            value = RestrictedUnpickler(f, path).load()
    except FileNotFoundError:
        raise MissingFileError(f'{path} not found') from None
    except RefusedPickleError:
        raise
    # what unpickling raises for a file that is not a pickle, or a damaged one (the pickle module's documentation:
    # "including (but not necessarily limited to) AttributeError, EOFError, ImportError, and IndexError")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OverflowError, MemoryError) as e:
        raise InputError(f'{path} is not a readable pickle file ({type(e).__name__}: {e})') from None
    if not isinstance(value, dict):
        raise InputError(f'{path} holds a {type(value).__name__}, not the dict of a CIFAR file')
    return {key.decode('latin-1') if isinstance(key, bytes) else key: item for key, item in value.items()}


def entry(content, key, path):
    """``content[key]``; InputError naming ``path`` and ``key`` when it is missing."""
    if key not in content:
        raise InputError(f'{path} has no "{key}" entry (it has {", ".join(map(str, content))}): not a CIFAR file of '
                         f'this release')
    return content[key]


def read_images(path, release):
    """(images (n, 3, 32, 32) uint8, labels (n,) int64) of one data file of ``release``; InputError naming the file
    and the entry that is not as the release writes it."""
    content = load_pickle(path)
    pixels, labels = entry(content, 'data', path), entry(content, release.labels_key, path)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or \
            pixels.shape[1] != 3 * IMAGE_SIDE * IMAGE_SIDE:
        found = f'an array of {pixels.dtype}, shape {pixels.shape}' if isinstance(pixels, np.ndarray) else \
            f'a {type(pixels).__name__}'
        raise InputError(f'{path}: "data" must be a uint8 array (n, 3072), found {found}')
    if not isinstance(labels, list) or len(labels) != len(pixels) or not all(
            type(label) is int and 0 <= label < release.num_classes for label in labels):
        raise InputError(f'{path}: "{release.labels_key}" must list {len(pixels)} integers in '
                         f'[0, {release.num_classes}), one per image')
    return pixels.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE), np.array(labels, dtype=np.int64)


def read_class_names(path, release):
    """The class names of ``release``'s meta file ``path``, as str."""
    names = entry(load_pickle(path), release.names_key, path)
    if not isinstance(names, list) or len(names) != release.num_classes or \
            not all(isinstance(name, (bytes, str)) for name in names):
        raise InputError(f'{path}: "{release.names_key}" must list the {release.num_classes} class names')
    return [name.decode('utf-8', errors='replace') if isinstance(name, bytes) else name for name in names]


class ArrayImages(Dataset):
    """Images held in memory, sorted by class: item i is (uint8 image (3, S, S), i, True), image i resized from
    32x32 to S x S (``preprocessing.image_size``, with its interpolation) by data.square_transform; the network
    normalises it. ``names[i]`` is image i's name in stream_order.txt (its file and row: ``train/4711``); ``where``
    is the release's folder."""

    def __init__(self, images, labels, names, preprocessing, where):
        self.images = images
        self.labels = labels
        self.names = names
        self.preprocessing = preprocessing
        self.where = where
        self.transform = None     # made when the first image is read

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if self.transform is None:
            self.transform = square_transform(self.preprocessing)
        return self.transform(Image.fromarray(self.images[index].transpose(1, 2, 0))), index, True

    def describe(self, index):
        file_name, _, row = self.names[index].rpartition('/')
        return f'image {row} of {os.path.join(self.where, file_name)}'

    def image_name(self, index):
        return self.names[index]

    def class_fingerprint(self, label, sizes=True):
        start, end = class_rows(self.labels, label)
        return hashlib.sha256(self.images[start:end].tobytes()).hexdigest()


def release_folder(images_dir, release):
    """The folder of ``release``: ``images_dir`` itself when it holds the meta file, else its sub-folder of the
    release's name; MissingFileError naming both when neither does."""
    for folder in (images_dir, os.path.join(images_dir, release.folder)):
        if os.path.isfile(os.path.join(folder, release.meta_file)):
            return folder
    raise MissingFileError(f'--images_dir {images_dir} holds neither {release.name}\'s "python version" files '
                           f'({release.meta_file}, {", ".join(release.train_files + release.test_files)}) nor a '
                           f'{release.folder}/ folder with them; this program never downloads them')


def cifar_splits(name, images_dir, preprocessing=Preprocessing()):
    """The train and test splits of release ``name`` (a key of RELEASES) found in ``images_dir`` (the release's
    folder, or the folder holding it), images resized from 32x32 to the network's input, ``preprocessing`` (a
    data.Preprocessing: its image size and interpolation, square, no crop; its mean and standard deviation
    applied by the network). Within a class, images keep the order of the files. Raises MissingFileError,
    RefusedPickleError or InputError naming the file at fault."""
    release = RELEASES[name]
    folder = release_folder(images_dir, release)
    classes = read_class_names(os.path.join(folder, release.meta_file), release)
    made = {}
    for split, files in (('train', release.train_files), ('test', release.test_files)):
        parts = [read_images(os.path.join(folder, file_name), release) for file_name in files]
        names = np.array([f'{file_name}/{row}' for file_name, (images, _) in zip(files, parts)
                          for row in range(len(images))])
        labels = np.concatenate([labels for _, labels in parts])
        order = np.argsort(labels, kind='stable')
        made[split] = ArrayImages(np.concatenate([images for images, _ in parts])[order], labels[order],
                                  names[order].tolist(), preprocessing, folder)
    size = preprocessing.image_size
    return SplitPair(name, classes, made['train'], made['test'],
                     f'{release.name} python version, PIL, resize {IMAGE_SIDE}x{IMAGE_SIDE} to {size}x{size} '
                     f'({preprocessing.interpolation}), mean {format_triple(preprocessing.mean)}, '
                     f'std {format_triple(preprocessing.std)}', 'test', os.path.realpath(folder))
