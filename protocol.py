"""The protocol of an experiment as data: the class order, and a plan of training batches.

A plan is a list of ``Batch``: the dataset indices fitted in that batch, in the order they are fitted, whether
the batch is the base initialisation (``fit_base``), and the test images evaluated after it. The driver only
walks the plan, so an ordering of the stream is a function that returns one:

- ``class_incremental``: the paper's ImageNet protocol, a given class order a few classes at a time;
- ``iid``: every training image in a random order, in batches of a fixed size; tested on all test images;
- ``class_iid``: the classes in a random order, a few per batch, each class's images in a random order;
  tested on the classes seen;
- ``instance``: the clips in a random order, each clip's frames together and in temporal order, in batches
  of a fixed size; tested on all test images;
- ``class_instance``: the classes in a random order, a few per batch, each class's clips in a random order
  and their frames in temporal order; tested on the classes seen.

The last four are the orderings of Hayes et al.'s CORe50 experiments (their Stream-51 code's make_dataset).
``ORDERINGS`` holds one entry each: adding an ordering is a builder and an entry, with the options it takes.
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from errors import InputError, MissingFileError
from options import Settings, SettingError, at_least, described, fields_of, option, seed
from utils import save_npy


@dataclass
class Batch:
    """One step of a plan. Indices are rows of the dataset's train and test splits."""
    number: int                 # 1-based position in the plan
    train_indices: np.ndarray   # (n,) int64, in the order they are fitted
    test_indices: np.ndarray    # (m,) int64, evaluated after the batch, in dataset order
    classes_seen: int           # distinct classes fitted so far
    name: str                   # names the batch's output files
    base_init: bool = False     # fit with fit_base (all at once, replacing the state) instead of fit


def class_incremental(train_labels, test_labels, order, num_classes, base_classes, class_increment,
                      shuffle_seed=None):
    """The class-incremental protocol of Hayes & Kanan on ImageNet.

    The first ``num_classes`` classes of ``order`` (class indices in stream order) are fitted
    ``class_increment`` at a time, after a base initialisation on the first ``base_classes`` (0: none). A batch
    holds its classes' images in dataset order, or shuffled with a generator seeded from ``shuffle_seed`` and
    the batch; after it, the test images of every class seen so far are evaluated.
    """
    order = np.asarray(order)
    if not 1 <= num_classes <= len(order):
        raise InputError(f'num_classes must be between 1 and the {len(order)} classes of the order, got {num_classes}')
    if class_increment < 1:
        raise InputError(f'class_increment must be at least 1, got {class_increment}')
    if base_classes < 0:
        raise InputError(f'base_classes must be non-negative, got {base_classes}')
    for name, value in (('class_increment', class_increment), ('base_classes', base_classes)):
        if value > num_classes:
            raise InputError(f'{name} {value} is larger than the {num_classes} classes streamed')
    seen = [base_classes] if base_classes else []
    while (seen[-1] if seen else 0) < num_classes:
        seen.append(min((seen[-1] if seen else 0) + class_increment, num_classes))
    plan = []
    for i, classes_seen in enumerate(seen):
        new = order[seen[i - 1] if i else 0:classes_seen]
        train_indices = np.flatnonzero(np.isin(train_labels, new))
        if shuffle_seed is not None:
            generator = torch.Generator().manual_seed(shuffle_seed * 100_003 + i)
            train_indices = train_indices[torch.randperm(len(train_indices), generator=generator).numpy()]
        plan.append(Batch(i + 1, train_indices, np.flatnonzero(np.isin(test_labels, order[:classes_seen])),
                          classes_seen, f'min_trained_0_max_trained_{classes_seen}', i == 0 and base_classes > 0))
    return plan


def iid(train_labels, test_labels, images_per_batch, seed, base_init=False):
    """Every training image in a random order (seeded), ``images_per_batch`` at a time; all test images after
    each batch. With ``base_init`` the first batch initialises the model with fit_base."""
    order = _permutation(len(train_labels), _generator(seed))
    return _plan(_chunks(order, images_per_batch), train_labels, test_labels, False, base_init)


def class_iid(train_labels, test_labels, classes_per_batch, seed, base_init=False):
    """The classes in a random order, ``classes_per_batch`` per batch; within a batch, class after class, each
    class's images in a random order; the test images of the classes seen after each batch."""
    generator = _generator(seed)
    classes = [run[_permutation(len(run), generator)] for run in _shuffled_runs(train_labels, generator)]
    return _plan(_class_chunks(classes, classes_per_batch), train_labels, test_labels, True, base_init)


def instance(train_labels, clips, test_labels, images_per_batch, seed, base_init=False):
    """The clips in a random order, each clip's frames together and in dataset (temporal) order,
    ``images_per_batch`` images at a time (a clip may straddle two batches); all test images after each batch.
    ``clips`` (n,) gives each training image's clip; a clip's frames must be contiguous in dataset order."""
    order = np.concatenate(_shuffled_runs(_check_clips(clips, train_labels), _generator(seed)))
    return _plan(_chunks(order, images_per_batch), train_labels, test_labels, False, base_init)


def class_instance(train_labels, clips, test_labels, classes_per_batch, seed, base_init=False):
    """The classes in a random order, ``classes_per_batch`` per batch; within a class its clips in a random
    order, frames in dataset (temporal) order; the test images of the classes seen after each batch."""
    clips = _check_clips(clips, train_labels)
    generator = _generator(seed)
    classes = []
    for run in _shuffled_runs(train_labels, generator):
        classes.append(np.concatenate([run[clip] for clip in _shuffled_runs(clips[run], generator)]))
    return _plan(_class_chunks(classes, classes_per_batch), train_labels, test_labels, True, base_init)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _permutation(n, generator):
    return torch.randperm(n, generator=generator).numpy()


def _run_bounds(keys):
    """[(start, end), ...] of the runs of equal values in ``keys``."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
    return list(zip(starts.tolist(), np.r_[starts[1:], len(keys)].tolist()))


def _shuffled_runs(keys, generator):
    """The runs of equal values of ``keys``, each an array of indices into ``keys`` in order, in a random
    order."""
    runs = [np.arange(start, end) for start, end in _run_bounds(np.asarray(keys))]
    return [runs[i] for i in _permutation(len(runs), generator)]


def _check_clips(clips, train_labels):
    clips = np.asarray(clips)
    if clips.shape != np.shape(train_labels):
        raise InputError(f'clips must give one clip per training image: {clips.shape} for {len(train_labels)}')
    if len(_run_bounds(clips)) != len(np.unique(clips)):
        raise InputError('the frames of each clip must be contiguous in dataset order')
    return clips


def _chunks(order, size):
    if size < 1:
        raise InputError(f'images_per_batch must be at least 1, got {size}')
    return [order[start:start + size] for start in range(0, len(order), size)]


def _class_chunks(classes, per_batch):
    """Batches of ``per_batch`` classes from a list of per-class index arrays in stream order."""
    if per_batch < 1:
        raise InputError(f'classes_per_batch must be at least 1, got {per_batch}')
    return [np.concatenate(classes[start:start + per_batch]) for start in range(0, len(classes), per_batch)]


def _plan(chunks, train_labels, test_labels, test_seen_classes, base_init):
    """The plan of training ``chunks`` (index arrays in fit order): after each, the test images of the classes
    seen so far, or all of them; files named batch_1, ..., zero-padded so that they sort in order."""
    width = len(str(len(chunks)))
    plan, seen = [], set()
    for i, chunk in enumerate(chunks):
        seen.update(np.unique(train_labels[chunk]).tolist())
        test = np.flatnonzero(np.isin(test_labels, sorted(seen))) if test_seen_classes else \
            np.arange(len(test_labels))
        plan.append(Batch(i + 1, chunk.astype(np.int64), test, len(seen), f'batch_{i + 1:0{width}d}',
                          base_init and i == 0))
    return plan


# ---------------------------------------------------------------------------------------------- class order
def label_file_names(dataset_name):
    """The original's names: ``imagenet_train_labels.npy`` and ``imagenet_val_labels.npy``."""
    return f'{dataset_name}_train_labels.npy', f'{dataset_name}_val_labels.npy'


def class_order_from_label_files(splits, labels_dir):
    """Class order (the dataset's class indices in stream order) from the original's label files.

    Each file holds one int64 per image, in dataset order: the stream position of the image's class.
    """
    if os.path.exists(labels_dir) and not os.path.isdir(labels_dir):
        raise InputError(f'--labels_dir {labels_dir} is a file, not a folder: give the folder that holds '
                         f'{" and ".join(label_file_names(splits.name))}')
    order = None
    for split, file_name in zip((splits.train, splits.test), label_file_names(splits.name)):
        path = os.path.join(labels_dir, file_name)
        try:
            positions = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise MissingFileError(f'class order file {path} not found') from None
        except NotADirectoryError:
            raise InputError(f'--labels_dir {labels_dir} cannot hold {file_name}: part of its path is a file, '
                             f'not a folder') from None
        except (IsADirectoryError, PermissionError) as e:
            raise InputError(f'class order file {path} cannot be read: {e.strerror}') from None
        except (OSError, ValueError):
            positions = None
        if not isinstance(positions, np.ndarray):
            raise InputError(f'{path} is not a .npy array as numpy.save writes one (an .npz archive or a text '
                             f'file?): one int64 per image is needed')
        if positions.ndim != 1 or positions.shape[0] != len(split.labels):
            raise InputError(f'{path} holds {positions.shape} values but its split has {len(split.labels)} '
                             f'images: one label per image, in ImageFolder order, is needed')
        if not np.issubdtype(positions.dtype, np.integer):
            raise InputError(f'{path} must hold integers, found {positions.dtype}')
        per_class = np.full(splits.num_classes, -1, dtype=np.int64)
        per_class[split.labels] = positions
        mismatch = per_class[split.labels] != positions
        if mismatch.any():
            first = int(np.flatnonzero(mismatch)[0])
            raise InputError(f'{path}: images of class {splits.classes[split.labels[first]]} have different '
                             f'stream positions (first disagreeing image: {split.describe(first)})')
        if not np.array_equal(np.sort(per_class), np.arange(splits.num_classes)):
            raise InputError(f'{path} is not a permutation of 0..{splits.num_classes - 1} over the classes')
        split_order = np.argsort(per_class)
        if order is not None and not np.array_equal(order, split_order):
            raise InputError(f'{path} gives a different class order from the train labels file')
        order = split_order
    return order


def generated_class_order(num_classes, seed, rng='torch'):
    """(num_classes,) int64, the class at each stream position: sorted order when seed is None, else a permutation
    drawn with ``seed`` by ``rng``: 'torch', this project's (torch.randperm on a generator seeded with ``seed``),
    or 'numpy', ``np.random.seed(seed); np.random.permutation(num_classes)``, the draw of PyCIL and LAMDA-PILOT
    (their CIFAR-100 order is seed 1993's), made here with a RandomState of its own, so NumPy's global state is
    left alone. Raises InputError for another ``rng``."""
    if seed is None:
        return np.arange(num_classes)
    if rng == 'numpy':
        return np.random.RandomState(seed).permutation(num_classes).astype(np.int64)
    if rng != 'torch':
        raise InputError(f'rng must be torch or numpy, got {rng!r}')
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).numpy()


def save_class_order(splits, order, directory):
    """Write the order as label files in the original's format, so a run can be repeated with them."""
    position = np.empty(splits.num_classes, dtype=np.int64)
    position[order] = np.arange(splits.num_classes)
    for split, file_name in zip((splits.train, splits.test), label_file_names(splits.name)):
        save_npy(os.path.join(directory, file_name), position[split.labels])


# -------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ClassBatches(Settings):
    classes_per_batch: Optional[int] = option(
        None, 'classes per batch (the class orderings; default: the dataset\'s, e.g. 100 for imagenet, 2 for '
              'core50 and the digits)', flags=('--class_increment',), metavar='N', check=at_least(1))


@dataclass(frozen=True)
class ClassIncrementalOptions(ClassBatches):
    base_init_classes: Optional[int] = option(None, 'classes in the base initialisation (default: one batch\'s)',
                                              metavar='N', check=at_least(1))
    labels_dir: Optional[str] = option(
        None, 'folder with <dataset>_train_labels.npy and <dataset>_val_labels.npy giving the class order '
              '(default: the first of ./imagenet_files/, this project\'s image_files/ and imagenet_files/ that '
              'holds them; none: no label files, the order of --class_order_seed or sorted)', metavar='DIR')
    class_order_seed: Optional[int] = option(None, 'without label files: shuffle the class order with this seed '
                                                   '(default: sorted order)', metavar='N', check=seed)
    class_order_rng: str = option('torch', 'how --class_order_seed N draws the class order: torch, this project\'s '
                                           'draw; numpy, np.random.seed(N); np.random.permutation(C) as PyCIL and '
                                           'LAMDA-PILOT draw it (N = 1993: their CIFAR-100 order)',
                                  choices=('torch', 'numpy'))
    num_classes: Optional[int] = option(None, 'stream only the first N classes of the class order (default: all)',
                                        metavar='N', check=at_least(1))
    shuffle_data: bool = option(False, 'shuffle the images within each batch (with --seed)')
    ood_classes: int = option(0, 'hold the last N classes of the class order out of training: after every batch, '
                                 'the AUROC of SLDA\'s Mahalanobis novelty score and of the maximum softmax '
                                 'probability, seen classes\' test images against these classes\' (summary.json)',
                              metavar='N', check=at_least(0))


@dataclass(frozen=True)
class SeededOrdering(Settings):
    ordering_seed: int = option(0, 'seed of the iid, class_iid, instance and class_instance orderings', metavar='N',
                                check=seed)


@dataclass(frozen=True)
class ImageBatches(SeededOrdering):
    images_per_batch: Optional[int] = option(None, 'images per batch of the iid and instance orderings (default: '
                                                   '1200 for core50, else a tenth of the training images)',
                                             metavar='N', check=at_least(1))


@dataclass(frozen=True)
class SeededClassBatches(SeededOrdering, ClassBatches):
    pass


def refuse(options, name, why):
    """A SettingError naming option ``name`` of ``options``."""
    return SettingError(name, f'{described(fields_of(type(options))[name])} {why}')


def plan_class_incremental(options, splits, base_init, class_order, shuffle_seed):
    available = splits.num_classes - options.ood_classes      # the held-out classes are never streamed
    if available < 1:
        raise refuse(options, 'ood_classes', f'{options.ood_classes}: the dataset has {splits.num_classes} classes '
                                              f'and at least one must be streamed')
    streamed = available if options.num_classes is None else options.num_classes
    held_out = f', {options.ood_classes} of them held out by --ood_classes' if options.ood_classes else ''
    if streamed > available:
        raise refuse(options, 'num_classes', f'{streamed}: the dataset has {splits.num_classes} classes{held_out}')
    for name in ('classes_per_batch', 'base_init_classes'):
        value = getattr(options, name)
        if value is not None and value > streamed:
            raise refuse(options, name, f'{value} is larger than the {streamed} classes streamed (the dataset has '
                                        f'{splits.num_classes}{held_out}); give at most {streamed} (a dataset of '
                                        f'your own needs values that fit its classes)')
    base_classes = options.base_init_classes if base_init else 0
    return class_incremental(splits.train.labels, splits.test.labels, class_order, streamed, base_classes,
                             options.classes_per_batch, shuffle_seed if options.shuffle_data else None)


def held_out_classes(options, class_order):
    """The classes --ood_classes keeps out of training: the last ``ood_classes`` of ``class_order``."""
    count = getattr(options, 'ood_classes', 0)
    return np.asarray(class_order)[len(class_order) - count:] if count else np.array([], dtype=np.int64)


def image_batch_size(options, splits):
    return options.images_per_batch or -(-len(splits.train.labels) // 10)


def one_image_batch(options, splits):
    """A warning when the iid or instance batches hold every training image, so that the stream is one batch;
    else None."""
    size, images = image_batch_size(options, splits), len(splits.train.labels)
    if size < images:
        return None
    flag = described(fields_of(type(options))['images_per_batch'])
    return (f'{flag} {size} is at least the {images} training images: the stream is a single batch, fitted '
            f'and tested once; give a smaller {flag} for a learning curve')


def class_batch_size(options, splits):
    if options.classes_per_batch > splits.num_classes:
        raise refuse(options, 'classes_per_batch', f'{options.classes_per_batch} is larger than the '
                                                   f'{splits.num_classes} classes')
    return options.classes_per_batch


def plan_iid(options, splits, base_init, class_order, shuffle_seed):
    return iid(splits.train.labels, splits.test.labels, image_batch_size(options, splits), options.ordering_seed,
               base_init)


def plan_class_iid(options, splits, base_init, class_order, shuffle_seed):
    return class_iid(splits.train.labels, splits.test.labels, class_batch_size(options, splits),
                     options.ordering_seed, base_init)


def plan_instance(options, splits, base_init, class_order, shuffle_seed):
    return instance(splits.train.labels, splits.train.clips, splits.test.labels, image_batch_size(options, splits),
                    options.ordering_seed, base_init)


def plan_class_instance(options, splits, base_init, class_order, shuffle_seed):
    return class_instance(splits.train.labels, splits.train.clips, splits.test.labels,
                          class_batch_size(options, splits), options.ordering_seed, base_init)


@dataclass(frozen=True)
class OrderingEntry:
    name: str
    help: str
    # (options, splits, base_init, class order or None, shuffle seed) -> [Batch]
    plan: Callable[..., list]
    options: type
    needs_clips: bool = False           # the dataset must know each training image's clip (core50)
    tests_seen_classes: bool = True     # evaluated on the classes seen so far; False: on every test image
    x_axis: str = 'classes'             # what learning curves plot against: 'classes' seen or 'images' seen
    # (options, splits) -> a warning that the plan may not be what was meant, or None
    warn: Optional[Callable[..., Optional[str]]] = None

    def plan_warning(self, options, splits):
        """Why the plan of ``options`` on ``splits`` may not be what was meant (a string), or None."""
        return self.warn(options, splits) if self.warn else None

    @property
    def uses_class_order(self):
        """Streams a class order given by label files or a seed (the paper's protocol)."""
        return issubclass(self.options, ClassIncrementalOptions)


ORDERINGS = {entry.name: entry for entry in [
    OrderingEntry('class_incremental', 'a class order, --class_increment classes at a time', plan_class_incremental,
                  ClassIncrementalOptions),
    OrderingEntry('iid', 'every training image in a random order', plan_iid, ImageBatches,
                  tests_seen_classes=False, x_axis='images', warn=one_image_batch),
    OrderingEntry('class_iid', 'classes in a random order, each class\'s images shuffled', plan_class_iid,
                  SeededClassBatches),
    OrderingEntry('instance', 'clips in a random order, frames in temporal order', plan_instance, ImageBatches,
                  needs_clips=True, tests_seen_classes=False, x_axis='images', warn=one_image_batch),
    OrderingEntry('class_instance', 'classes in a random order, each class\'s clips shuffled, frames in order',
                  plan_class_instance, SeededClassBatches, needs_clips=True),
]}
