"""Image datasets: splits whose images are listed class by class, and the listers of the datasets here.

Every dataset is a pair of splits (train, test) whose images are listed class by class, classes in the order
of their label index (ImageFolder's order: sorted folder names, sorted files), so that the images of a class
are contiguous and "dataset order" is the order of this list. ``Split`` writes down what the rest of the
project relies on; ``SplitPair`` checks it.
"""
import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from errors import InputError, MissingFileError
from utils import load_json, save_json

# torchvision's ImageFolder extensions, here so that listing files does not import torchvision (slow), which a
# rerun from the feature cache never needs
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

# Images with more pixels than this are treated as unreadable: decoding one takes memory in proportion (about
# 1.2 GB for this many), and one so large is more likely a decompression bomb than a photograph. PIL's own
# decompression-bomb threshold.
MAX_IMAGE_PIXELS = 89_478_485

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_SIZE = 32


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network's input: resize the short side to ``resize_size`` pixels with
    ``interpolation`` (a torchvision InterpolationMode value: bilinear, bicubic, ...), centre-crop
    ``image_size`` x ``image_size`` pixels, scale to [0, 1], then subtract ``mean`` and divide by ``std`` per RGB
    channel. The defaults are torchvision's ImageNet evaluation transform, the paper's; backbones.py reads
    other networks' own from timm and torchvision. ``centre_crop`` False: the image is resized to ``image_size``
    x ``image_size`` without keeping its aspect ratio or cropping (``resize_size`` is then ``image_size``), as
    for datasets of small or square images (``square``)."""
    image_size: int = 224
    resize_size: int = 256
    interpolation: str = 'bilinear'
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    centre_crop: bool = True

    def at_size(self, image_size):
        """The same preprocessing for ``image_size`` pixels, resizing in the same ratio (256 for 224 at 0.875)."""
        if image_size == self.image_size:
            return self
        crop_fraction = self.image_size / self.resize_size
        return Preprocessing(image_size, int(round(image_size / crop_fraction)), self.interpolation, self.mean,
                             self.std, self.centre_crop)

    def square(self):
        """The same size, interpolation and normalisation, resizing square without a crop."""
        return Preprocessing(self.image_size, self.image_size, self.interpolation, self.mean, self.std, False)

    def describe(self):
        normalisation = f'mean {format_triple(self.mean)}, std {format_triple(self.std)}'
        if not self.centre_crop:
            return f'square resize to {self.image_size} ({self.interpolation}), {normalisation}'
        return f'resize {self.resize_size} ({self.interpolation}), centre-crop {self.image_size}, {normalisation}'


def format_triple(values):
    return '(' + ', '.join(f'{v:.4g}' for v in values) + ')'


def class_rows(labels, label):
    """(start, end) of the rows of ``label`` in a label array sorted by class."""
    start, end = np.searchsorted(labels, [label, label + 1])
    return int(start), int(end)


@runtime_checkable
class Split(Protocol):
    """What a split must offer. ``labels`` is an int64 array (n,) sorted by class, so that each class's images
    are contiguous; item i is (image, i, ok): the image as a uint8 (3, H, W) tensor or a normalised float
    one, ok False when it could not be read (a placeholder image then). ``describe(i)`` names image i for a
    person (a path); ``image_name(i)`` names it in stream_order.txt (its path relative to the dataset's folder,
    or its index); ``class_fingerprint(label, sizes)`` is a string that changes when the images of class
    ``label`` change (``sizes`` False may trust cheaper evidence such as folder times). A split that knows its
    clips (recordings of one object, frames in temporal order, contiguous in dataset order) has ``clips``, an
    int64 array (n,) giving each image's clip; the instance orderings need it."""
    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index): ...

    def describe(self, index) -> str: ...

    def image_name(self, index) -> str: ...

    def class_fingerprint(self, label, sizes=True) -> str: ...


def check_split(split, num_classes, name):
    """Raise TypeError or ValueError, naming the split ``name``, where ``split`` breaks the ``Split`` contract."""
    if not isinstance(split, Split):
        raise TypeError(f'{name} split ({type(split).__name__}) lacks what a Split needs: labels, __len__, '
                        f'__getitem__, describe, image_name, class_fingerprint')
    labels = split.labels
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype != np.int64:
        raise TypeError(f'{name} split: labels must be a 1-D int64 numpy array')
    if len(labels) != len(split):
        raise InputError(f'{name} split has {len(split)} images but {len(labels)} labels')
    if len(labels) and (labels[0] < 0 or labels[-1] >= num_classes or (np.diff(labels) < 0).any()):
        raise InputError(f'{name} split: labels must be sorted by class and lie in [0, {num_classes})')


def rgb_image(image):
    """A PIL image as 8-bit RGB. PIL's own ``convert('RGB')`` clips integer grayscale of more than 8 bits (modes
    I;16* and I, as 16-bit PNG, PGM and TIFF files open) at 255 instead of scaling it, which turns such an image
    nearly white: those are scaled from 0-65535 to 0-255 first, to the nearest level (values outside 0-65535
    saturate; 12-bit data stored in 16 bits comes out dark). Floating-point images (mode F) are left to PIL."""
    if image.mode == 'I' or image.mode.startswith('I;16'):
        levels = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        image = Image.fromarray(((levels + 128) // 257).astype(np.uint8), 'L')
    return image.convert('RGB')


class ImageList(Dataset):
    """The image files of a split folder, class by class; item i is (uint8 image (3, S, S), i, ok), ok False
    when the file cannot be read.

    ``class_files[k]`` names the files of class k, relative to its folder ``root/class_folders[k]`` (by default
    ``root/classes[k]``, as in an ImageFolder; '' for files of a class spread over several folders) and joined
    by newlines. Paths are split out of it only for a class being read: a rerun from the feature cache, which
    reads no image, then never builds ImageNet's 1.33 million path strings. ``make_transform(preprocessing)``
    builds the PIL-to-uint8 transform (default ``folder_transform``) from a ``Preprocessing``; ``relative_root``
    is ``root`` relative to
    the dataset's folder, for ``image_name``.

    A bad image is not an exception here so that the caller, which knows whether bad images are skipped,
    decides what to do, and so that the error names the file even from a DataLoader worker.
    """

    def __init__(self, root, classes, class_files, preprocessing, class_folders=None, make_transform=None,
                 relative_root=''):
        self.root = root
        self.classes = classes
        self.class_files = class_files
        self.class_folders = classes if class_folders is None else class_folders
        counts = [names.count('\n') + 1 if names else 0 for names in class_files]
        self.labels = np.repeat(np.arange(len(classes)), counts)
        self.preprocessing = preprocessing
        self.image_size = preprocessing.image_size
        self.make_transform = make_transform or folder_transform
        self.relative_root = relative_root
        self.transform = None      # made when the first image is read
        self.last_class = (-1, [])     # (label, its file names) of the last path asked for

    def __len__(self):
        return len(self.labels)

    def _below_root(self, index):
        """Image ``index``'s path relative to ``root``."""
        label = int(self.labels[index])
        last = self.last_class      # one tuple, read and replaced whole, as two threads may ask at once
        if last[0] != label:
            last = self.last_class = (label, self.class_files[label].split('\n'))
        start, _ = class_rows(self.labels, label)
        return os.path.join(self.class_folders[label], last[1][index - start])

    def path(self, index):
        return os.path.join(self.root, self._below_root(index))

    def image_name(self, index):
        return os.path.join(self.relative_root, self._below_root(index))

    def __getitem__(self, index):
        if self.transform is None:
            self.transform = self.make_transform(self.preprocessing)
        try:
            with Image.open(self.path(index)) as image:      # reads the header only; decoding comes later
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise InputError('too many pixels')
                return self.transform(rgb_image(image)), index, True
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), index, False

    def describe(self, index):
        return self.path(index)

    def class_fingerprint(self, label, sizes=True):
        """Identifies the files of one class by their paths below the split folder and, with ``sizes``,
        their sizes (a stat per file); without, by the modification times of the folders
        holding them (a stat per folder), which change when files are added, removed or renamed but not
        when a file is rewritten in place."""
        names = self.class_files[label]
        class_folder = os.path.join(self.root, self.class_folders[label])
        prefix = os.path.join(class_folder, '')     # prefix + name is os.path.join(class_folder, name), cheaper
        if sizes:
            stamps = [os.stat(prefix + name).st_size for name in names.split('\n')]
        else:
            folders = sorted({(prefix + name).rpartition(os.sep)[0] for name in names.split('\n')}) \
                if os.sep in names else [class_folder]
            stamps = [os.stat(folder).st_mtime_ns for folder in folders]
        relative_prefix = os.sep + os.path.join(self.class_folders[label], '')
        text = relative_prefix + names.replace('\n', '\n' + relative_prefix) + '\0' + ' '.join(map(str, stamps))
        return hashlib.sha256(text.encode(errors='surrogateescape')).hexdigest()    # names need not be UTF-8


class TensorImages(Dataset):
    """Images already in memory as a float (n, 3, H, W) tensor in [0, 1] (normalised by the network's
    preprocessing on its device); item i is (image, i, True)."""

    def __init__(self, images, labels, name):
        self.images = images
        self.labels = labels
        self.name = name

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], index, True

    def describe(self, index):
        return f'{self.name} image {index}'

    def image_name(self, index):
        return str(index)

    def class_fingerprint(self, label, sizes=True):
        start, end = class_rows(self.labels, label)
        return hashlib.sha256(self.images[start:end].numpy().tobytes()).hexdigest()


class SplitPair:
    """The train and test splits of one dataset plus what the protocol needs to know about them."""

    def __init__(self, name, classes, train, test, transform_description, test_name='val', source=None):
        check_split(train, len(classes), 'train')
        check_split(test, len(classes), 'test')
        self.name = name
        self.test_name = test_name      # the test split's name: its folder, and its name in the feature cache
        self.source = source or name    # where the images come from (an images folder's resolved path)
        self.classes = classes
        self.train = train
        self.test = test
        self.transform_description = transform_description

    @property
    def num_classes(self):
        return len(self.classes)


def digits_splits():
    """scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes) as 32x32 RGB images.

    A fixed stratified split: within each class, in the dataset's order, every fourth image is a test
    image (454 test, 1,343 train). Pixels are scaled to [0, 1] and upscaled bilinearly; the network's own
    mean and standard deviation are applied on its device, as for photographs.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.argsort(digits.target, kind='stable')
    labels = digits.target[order].astype(np.int64)
    pixels = torch.from_numpy(digits.images[order] / 16.0).float().unsqueeze(1)
    images = torch.nn.functional.interpolate(pixels, size=(DIGITS_SIZE, DIGITS_SIZE), mode='bilinear',
                                             align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    position_in_class = np.zeros(len(labels), dtype=np.int64)
    for k in np.unique(labels):
        position_in_class[labels == k] = np.arange((labels == k).sum())
    is_test = position_in_class % 4 == 0
    classes = [str(k) for k in range(10)]
    return SplitPair('digits', classes,
                     TensorImages(images[~is_test], labels[~is_test], 'digits train'),
                     TensorImages(images[is_test], labels[is_test], 'digits test'),
                     f'digits bilinear {DIGITS_SIZE}x{DIGITS_SIZE}')


# CORe50 (Lomonaco & Maltoni 2017): sessions s1..s11, objects o1..o50, five objects per category in this order.
CORE50_CATEGORIES = ('plug_adapter', 'mobile_phone', 'scissors', 'light_bulb', 'can', 'glasses', 'ball',
                     'marker', 'cup', 'remote_control')
CORE50_TRAIN_SESSIONS = (1, 2, 4, 5, 6, 8, 9, 11)
CORE50_TEST_SESSIONS = (3, 7, 10)
CORE50_FRAME = re.compile(r'C_(\d\d)_(\d\d)_(\d\d\d)\.png')


def core50_splits(images_dir, preprocessing=Preprocessing(), frame_stride=20, labels='category'):
    """CORe50's ``core50_128x128/`` folder: train on sessions 1, 2, 4, 5, 6, 8, 9, 11, test on 3, 7, 10.

    Of each clip (a session's recording of one object, frames ``C_SS_OO_FFF.png`` at 20 fps) the frames
    ``frame_stride // 2``, then every ``frame_stride``-th, are kept: 10, 30, ..., 290 for the default 20 (one
    per second). Files not named like frames are not images of the dataset and are left out. ``labels`` is
    ``category`` (10 classes) or ``object`` (one class per object present). Images are resized to the
    ``preprocessing``'s image size, square, without cropping. A split lists its images by class, object, session,
    frame; its ``clips`` (n,) give each image's clip, numbered in that order.
    """
    if labels not in ('category', 'object'):
        raise InputError(f'labels must be category or object, got {labels!r}')
    if frame_stride < 1:
        raise InputError(f'frame_stride must be at least 1, got {frame_stride}')
    if not os.path.isdir(images_dir):
        raise MissingFileError(f'images_dir {images_dir} does not exist or is not a folder; it must hold CORe50\'s '
                                f'session folders s1 ... s11')
    splits = {}
    for split, sessions in (('train', CORE50_TRAIN_SESSIONS), ('test', CORE50_TEST_SESSIONS)):
        frames = []           # (object, session, frame, path relative to images_dir)
        for session in sessions:
            folder = os.path.join(images_dir, f's{session}')
            if not os.path.isdir(folder):
                raise MissingFileError(f'{folder} is missing: images_dir must hold CORe50\'s session folders '
                                        f's1 ... s11 (sessions {", ".join(map(str, sessions))} are the {split} split)')
            for object_folder in sorted(os.listdir(folder)):
                match = re.fullmatch(r'o(\d+)', object_folder)
                if not match or not 1 <= int(match[1]) <= 50:
                    continue
                for name in os.listdir(os.path.join(folder, object_folder)):
                    parts = CORE50_FRAME.fullmatch(name)
                    if parts and int(parts[3]) % frame_stride == frame_stride // 2:
                        frames.append((int(match[1]), session, int(parts[3]),
                                       os.path.join(f's{session}', object_folder, name)))
        if not frames:
            raise InputError(f'no CORe50 frames (C_SS_OO_FFF.png) in the {split} sessions of {images_dir}')
        splits[split] = frames
    objects = sorted({frame[0] for frames in splits.values() for frame in frames})
    if labels == 'category':
        classes = list(CORE50_CATEGORIES)
        label_of = {o: (o - 1) // 5 for o in objects}
    else:
        classes = [f'o{o}' for o in objects]
        label_of = {o: i for i, o in enumerate(objects)}
    made = {}
    for split, frames in splits.items():
        frames.sort(key=lambda frame: (label_of[frame[0]], frame[0], frame[1], frame[2]))
        names = [[] for _ in classes]
        clips, clip_keys = [], {}
        for obj, session, _, path in frames:
            names[label_of[obj]].append(path)
            clips.append(clip_keys.setdefault((obj, session), len(clip_keys)))
        empty = [name for name, files in zip(classes, names) if not files]
        if empty:
            raise InputError(f'CORe50 {split} split of {images_dir} has no frames of {", ".join(empty)}')
        images = ImageList(images_dir, classes, ['\n'.join(files) for files in names], preprocessing,
                           class_folders=[''] * len(classes), make_transform=square_transform)
        images.clips = np.array(clips, dtype=np.int64)
        made[split] = images
    return SplitPair('core50', classes, made['train'], made['test'],
                     f'CORe50 {labels} labels, PIL, {preprocessing.square().describe()}', 'test',
                     os.path.realpath(images_dir))


def normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(n, 3, H, W) uint8 images in [0, 255] or floats in [0, 1] -> float32 normalised with ``mean`` and ``std``
    per channel (ImageNet's by default); the same arithmetic as torchvision's ToTensor followed by Normalize."""
    if images.dtype == torch.uint8:
        images = images.float().div(255)
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return images.sub(mean).div(std)


def interpolation_mode(name):
    from torchvision.transforms import InterpolationMode
    return InterpolationMode(name)


def folder_transform(preprocessing):
    """Resize the short side to ``preprocessing.resize_size`` and centre-crop ``preprocessing.image_size``; the
    result stays uint8.

    Normalisation happens on the network's device (``normalize``): decoding workers then hand over a quarter
    of the bytes, which matters when they feed a GPU.
    """
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(preprocessing.resize_size, interpolation_mode(preprocessing.interpolation)),
        transforms.CenterCrop(preprocessing.image_size), transforms.PILToTensor()])


def square_transform(preprocessing):
    """Resize to image_size x image_size, without keeping the aspect ratio or cropping; the result stays uint8."""
    from torchvision import transforms
    size = preprocessing.image_size
    return transforms.Compose([transforms.Resize((size, size), interpolation_mode(preprocessing.interpolation)),
                               transforms.PILToTensor()])


def list_classes(split_folder):
    """ImageFolder's classes: the names of the sub-folders (links followed), sorted."""
    with os.scandir(split_folder) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir())


def list_image_files(class_folder):
    """The image files in ``class_folder`` and its sub-folders (links followed), in torchvision ImageFolder's
    order: folders sorted by path, files by name within each. Like ``make_dataset``, with less Python work
    per file, which counts on ImageNet's 1.28 million files.

    Returns (names, folder_times): names are relative to ``class_folder``; folder_times maps each folder
    scanned, relative to ``class_folder`` ('' for itself), to its modification time in ns, read before the
    folder was.
    """
    folders = []
    folder_times = {}
    prefix_length = len(os.path.join(class_folder, ''))
    pending = [(class_folder, ())]        # (folder, (device, inode) of the folders above it and itself)
    while pending:
        folder, above = pending.pop()
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in above:
            raise InputError(f'{folder} leads back to a folder above it (a link loop); remove the link')
        above += ((status.st_dev, status.st_ino),)
        folder_times[folder[prefix_length:]] = status.st_mtime_ns
        names = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    pending.append((entry.path, above))
                elif entry.name.lower().endswith(IMG_EXTENSIONS):
                    names.append(entry.name)
        folders.append((folder, sorted(names)))
    # folder + separator + name is os.path.join(folder, name) for a plain name, without its per-call checks
    relative_names = [prefix + name for folder, names in sorted(folders)
                      for prefix in [os.path.join(folder, '')[prefix_length:]] for name in names]
    return relative_names, folder_times


def folders_unchanged(class_folder, folder_times):
    """True when every folder of ``folder_times`` (from ``list_image_files``) still has its time."""
    prefix = os.path.join(class_folder, '')
    try:
        return all(os.stat(prefix + folder).st_mtime_ns == mtime for folder, mtime in folder_times.items())
    except OSError:
        return False


# A folder's modification time moves only at each tick of the file system's clock (up to 2 s on FAT), so a
# class whose folders changed more recently than this may change again unseen and is listed every time.
RECENTLY_CHANGED_NS = 3_000_000_000


def list_split(root, classes, saved, now_ns=None):
    """The image files of each class folder of the split folder ``root``, as ``ImageList`` takes them (names
    relative to the class folder, joined by newlines), and a listing of them to give as ``saved`` next time:
    {class: [folder_times, names]}.

    A class in ``saved`` whose folders all still have the modification times they had when it was listed
    is not listed again: adding, removing or renaming a file changes its folder's time. A class with a
    folder changed in the last few seconds before ``now_ns`` (default: now) is left out of the new listing.
    """
    now = time.time_ns() if now_ns is None else now_ns
    class_files, listing = [], {}
    for name in classes:
        class_folder = os.path.join(root, name)
        entry = saved.get(name)
        if entry is None or not folders_unchanged(class_folder, entry[0]):
            names, folder_times = list_image_files(class_folder)
            if '\n' in ''.join(names):
                bad = next(file_name for file_name in names if '\n' in file_name)
                raise InputError(f'{os.path.join(class_folder, bad)!r}: file names with a line break are not '
                                 f'supported; rename the file')
            entry = [folder_times, '\n'.join(names)]
        class_files.append(entry[1])
        if now - max(entry[0].values()) > RECENTLY_CHANGED_NS:
            listing[name] = entry
    return class_files, listing


def read_listing(path):
    """A listing saved by ``image_folder_splits``, {split: {class: [folder_times, names]}}, or {} when the
    file is missing or not one."""
    try:
        listing = load_json(path)
    except (OSError, ValueError):
        return {}

    def valid(entry):
        return (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], dict) and entry[0]
                and all(isinstance(t, int) for t in entry[0].values()) and isinstance(entry[1], str))
    if not isinstance(listing, dict) or not all(isinstance(split, dict) and all(map(valid, split.values()))
                                                for split in listing.values()):
        return {}
    return listing


def image_folder_splits(name, images_dir, preprocessing=Preprocessing(), test_split='val', list_class=ImageList,
                        decoder_description='PIL', listing_dir=None):
    """An ImageFolder pair ``images_dir/train`` and ``images_dir/<test_split>`` with the same class folders.

    ``list_class`` builds each split from (split folder, classes, class_files, preprocessing), like
    ``ImageList``; ``decoder_description``
    names who decodes the files, which is part of what the feature cache keys on. With ``listing_dir``, the
    file listing is kept there (a file per ``images_dir``) and classes whose folders are unchanged are not
    listed again (see ``list_split``).
    """
    if not os.path.isdir(images_dir):
        raise MissingFileError(f'images_dir {images_dir} does not exist or is not a folder; it must hold '
                                f'train/ and {test_split}/ with one sub-folder per class')
    listing_file = None
    if listing_dir:
        folder_hash = hashlib.sha256(os.path.abspath(images_dir).encode()).hexdigest()[:16]
        listing_file = os.path.join(listing_dir, f'listing_{folder_hash}.json')
    saved = read_listing(listing_file) if listing_file else {}
    listing = {}
    splits = {}
    classes = None
    for split in ('train', test_split):
        root = os.path.join(images_dir, split)
        if not os.path.isdir(root):
            others = sorted(entry for entry in os.listdir(images_dir) if entry != 'train'
                            and not entry.startswith('.') and os.path.isdir(os.path.join(images_dir, entry)))
            hint = (f'; to test on {others[0]}/, give --test_split {others[0]}'
                    if split == test_split and others else '')
            raise MissingFileError(f'{root} is missing: images_dir must hold train/ and {test_split}/ '
                                    f'folders with one sub-folder per class{hint}')
        split_classes = list_classes(root)
        if not split_classes:
            raise InputError(f'{root} has no class sub-folders; put each class\'s images in a folder of its own')
        if classes is None:
            classes = split_classes
        elif split_classes != classes:
            only_train = sorted(set(classes) - set(split_classes))[:5]
            only_test = sorted(set(split_classes) - set(classes))[:5]
            raise InputError(f'train/ and {split}/ in {images_dir} have different class folders '
                             f'(only in train: {only_train}, only in {split}: {only_test})')
        class_files, listing[split] = list_split(root, classes, saved.get(split, {}))
        empty = [class_name for class_name, names in zip(classes, class_files) if not names]
        if empty:
            raise InputError(f'class folder(s) with no images in {root}: {", ".join(empty[:5])} '
                             f'(image extensions: {", ".join(IMG_EXTENSIONS)})')
        splits[split] = list_class(root, classes, class_files, preprocessing, relative_root=split)
    if listing_file and listing != saved:
        try:
            os.makedirs(listing_dir, exist_ok=True)
            save_json(listing_file, listing, indent=None)     # compact: the file is read by every rerun
        except OSError:
            pass        # a read-only shared cache: the listing is only a shortcut for the next run
    return SplitPair(name, classes, splits['train'], splits[test_split],
                     f'decoded by {decoder_description}, {preprocessing.describe()}', test_split,
                     os.path.realpath(images_dir))
