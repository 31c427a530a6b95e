"""Deep SLDA streaming experiment.

A frozen CNN turns images into pooled features; StreamingLDA is initialised on the first classes
(fit_base) and then learns the remaining classes a few at a time, one pass over each image. After every
increment it is evaluated on the test images of all classes seen so far, and the probabilities,
accuracies and model are saved.

    python experiment.py                                   # handwritten digits, runs in seconds
    python experiment.py --dataset imagenet --images_dir /data/imagenet \\
        --base_init_ckpt image_files/imagenet_100_class_ckpt.pth --streaming_update_sigma
"""
import argparse
import functools
import os
import platform
import sys
import time
import warnings
from importlib.metadata import version

import numpy as np
import torch

import distributed
import protocol
from datasets import DATASETS, ListingOptions
from feature_cache import FeatureCache, cache_key, listings_folder
from heads import HEADS, NearestClassMean, OfflineSoftmax, SoftmaxStream
from features import (BadImageError, Extraction, FeatureExtractor, FeatureReader, PartialCheckpointError,
                      cpu_supports_bfloat16)
from results import ResultsFolder, make_summary, read_offline_accuracies, test_images_digest
from slda_model import StreamingLDA
from utils import BackgroundFiles, UserError, crash_point, remove_stale_temporaries, topk_accuracy

PROJECT = os.path.dirname(os.path.abspath(__file__))
IMAGE_FILES = os.path.join(PROJECT, 'image_files')
DEFAULT_TEST_SPLIT, DEFAULT_IMAGE_SIZE, DEFAULT_CACHE_CHECK, DEFAULT_FRAME_STRIDE = 'val', 224, 'sizes', 20
# Flags that only some datasets use (DatasetEntry.flags), with their defaults there; elsewhere giving one is an
# error.
DATASET_FLAG_DEFAULTS = {'images_dir': None, 'test_split': DEFAULT_TEST_SPLIT, 'image_size': DEFAULT_IMAGE_SIZE,
                         'decode_on_device': False, 'skip_bad_images': False, 'cache_check': DEFAULT_CACHE_CHECK,
                         'frame_stride': DEFAULT_FRAME_STRIDE, 'core50_labels': 'category'}
ORDERINGS = ('class_incremental', 'iid', 'class_iid', 'instance', 'class_instance')


def support_folders():
    """Where label files and the base checkpoint are looked for, in order: the original's ./imagenet_files/
    (relative to the working directory, as the original reads it), then this project's image_files/ and
    imagenet_files/."""
    folders = [os.path.abspath('imagenet_files'), IMAGE_FILES, os.path.join(PROJECT, 'imagenet_files')]
    return list(dict.fromkeys(folders))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_arguments in (add_data_arguments, add_network_arguments, add_protocol_arguments, add_running_arguments):
        add_arguments(parser)
    parser.add_argument('--version', action='version',
                        version=f'torch {torch.__version__}, torchvision {version("torchvision")}')
    args = parser.parse_args(argv)
    complete_defaults(args)
    return args


def add_data_arguments(parser):
    group = parser.add_argument_group('data')
    group.add_argument('--dataset', choices=list(DATASETS), default=None,
                       help='; '.join(f'{entry.name}: {entry.help}' for entry in DATASETS.values()) +
                            ' (default: imagenet with --images_dir, as in the original, else digits)')
    group.add_argument('--images_dir', metavar='DIR',
                       help='folder holding train/ and val/ (image-folder datasets: ' +
                            ', '.join(e.name for e in DATASETS.values() if e.image_files) + ')')
    group.add_argument('--test_split', metavar='NAME', default=None,
                       help=f'name of the test folder (default: {DEFAULT_TEST_SPLIT})')
    group.add_argument('--image_size', metavar='N', type=int, default=None,
                       help=f'centre-crop size; images are first resized to size / 0.875 (default: '
                            f'{DEFAULT_IMAGE_SIZE})')
    group.add_argument('--labels_dir', metavar='DIR', default=None,
                       help='folder with <dataset>_train_labels.npy and <dataset>_val_labels.npy giving the '
                            'class order (default: the first of ./imagenet_files/, this project\'s image_files/ '
                            'and imagenet_files/ that holds them)')
    group.add_argument('--class_order_seed', metavar='N', type=int, default=None,
                       help='without label files: shuffle the class order with this seed (default: '
                            'sorted order)')
    group.add_argument('--num_classes', metavar='N', type=int, default=None,
                       help='stream only the first N classes of the class order (default: all)')
    group.add_argument('--decode_on_device', action='store_true',
                       help='decode JPEG files in batches on the network\'s device (nvJPEG on CUDA) instead of '
                            'with PIL in the workers, which then only read files; for image folders')
    group.add_argument('--skip_bad_images', action='store_true',
                       help='skip unreadable images (listed in summary.json) instead of stopping')
    group.add_argument('--frame_stride', metavar='N', type=int, default=None,
                       help=f'core50: keep frames N/2, N/2 + N, ... of each clip (default: {DEFAULT_FRAME_STRIDE}, '
                            f'one frame per second: 10, 30, ..., 290)')
    group.add_argument('--core50_labels', choices=['category', 'object'], default=None,
                       help='core50: the 10 categories or the 50 objects as classes (default: category)')


def add_network_arguments(parser):
    group = parser.add_argument_group('network')
    group.add_argument('--arch', metavar='NAME', default='resnet18',
                       help='torchvision classification model (default: %(default)s)')
    group.add_argument('--extract_layer', metavar='NAME', default='layer4.1',
                       help='layer whose output, mean-pooled over space, is the feature (default: %(default)s)')
    group.add_argument('--base_init_ckpt', metavar='PATH', default=None,
                       help='checkpoint of the network trained on the base classes (default for imagenet: '
                            'imagenet_100_class_ckpt.pth in the first of ./imagenet_files/, this project\'s '
                            'image_files/ and imagenet_files/ that holds it)')
    group.add_argument('--allow_partial_checkpoint', action='store_true',
                       help='use a checkpoint that lacks tensors the feature layer depends on (they keep their '
                            'random initialisation; said on standard error and in config.json)')
    group.add_argument('--weights', metavar='NAME', default=None,
                       help='a torchvision weight set already in the local torch cache, e.g. IMAGENET1K_V1')
    group.add_argument('--input_feature_size', metavar='N', type=int, default=None,
                       help='expected feature size; checked against the network (default: found)')
    group.add_argument('--amp', choices=['auto', 'on', 'off'], default='auto',
                       help='bfloat16 autocast for the network: auto uses it on CUDA and on CPUs with '
                            'bfloat16 instructions (default: %(default)s)')


def add_protocol_arguments(parser):
    group = parser.add_argument_group('protocol and model')
    group.add_argument('--class_increment', metavar='N', type=int, default=None,
                       help='classes per increment, or per batch in the class_iid and class_instance orderings '
                            '(default: ' + ', '.join(f'{e.class_increment} for {e.name}' for e in DATASETS.values()) +
                            ')')
    group.add_argument('--base_init_classes', metavar='N', type=int, default=None,
                       help='classes in the base initialisation (default: one increment)')
    group.add_argument('--no_base_init', action='store_true', help='stream every class, no fit_base')
    group.add_argument('--base_init', action='store_true',
                       help='fit the first batch with fit_base (the default except for core50)')
    group.add_argument('--ordering', choices=ORDERINGS, default=None,
                       help='order of the stream: class_incremental (a class order, --class_increment classes at '
                            'a time), iid, class_iid, instance, class_instance (see README; default: iid for '
                            'core50, else class_incremental)')
    group.add_argument('--ordering_seed', metavar='N', type=int, default=None,
                       help='seed of the iid, class_iid, instance and class_instance orderings (default: 0)')
    group.add_argument('--images_per_batch', metavar='N', type=int, default=None,
                       help='iid and instance orderings: images per batch (default: 1200 for core50, else a tenth '
                            'of the training images)')
    group.add_argument('--streaming_update_sigma', action=argparse.BooleanOptionalAction, default=None,
                       help='plastic covariance, updated by every sample; --no-streaming_update_sigma keeps '
                            'the base-initialisation covariance fixed (default: ' +
                            ', '.join(f'{"plastic" if e.plastic_covariance else "fixed"} for {e.name}'
                                      for e in DATASETS.values()) + '; imagenet\'s is the original\'s)')
    group.add_argument('--shrinkage', metavar='EPS', type=float, default=1e-4,
                       help='covariance shrinkage (default: %(default)s)')
    group.add_argument('--mask_unseen_classes', action='store_true',
                       help='give classes not seen yet a score of -inf (the paper does not)')
    group.add_argument('--slda_dtype', choices=['float32', 'float64'], default='float32',
                       help='precision of the SLDA state (default: %(default)s)')
    group.add_argument('--shuffle_data', action='store_true', help='shuffle the images within each increment')
    group.add_argument('--offline_accuracies', metavar='FILE', default=None,
                       help='JSON file {"top1": [...], "top5": [...]} with an offline model\'s accuracy after each '
                            'increment, as fractions in (0, 1] or in percent (read as percent when any value '
                            'exceeds 1); adds Omega_all (mean of ours / offline) to summary.json')
    group.add_argument('--heads', metavar='LIST', default='slda',
                       help='output layers fitted on the same features in the same stream order, comma-separated: '
                            'slda (always), ncm (nearest class mean), softmax_stream (one pass of SGD), offline '
                            '(softmax trained to convergence on all features so far, after each batch); '
                            'summary.json gets each one\'s accuracies (default: %(default)s)')
    group.add_argument('--softmax_lr', metavar='LR', type=float, default=0.01,
                       help='softmax_stream head: SGD learning rate (default: %(default)s)')
    group.add_argument('--softmax_batch_size', metavar='N', type=int, default=1,
                       help='softmax_stream head: samples per SGD step (default: %(default)s, one at a time)')
    group.add_argument('--seed', metavar='N', type=int, default=0,
                       help='seed for shuffling and random initialisation (default: %(default)s)')


def add_running_arguments(parser):
    group = parser.add_argument_group('running')
    group.add_argument('--batch_size', metavar='N', type=int, default=256,
                       help='images per network batch (default: %(default)s)')
    group.add_argument('--device', metavar='DEV', default='auto',
                       help='auto, cpu, cuda or cuda:N (default: %(default)s)')
    group.add_argument('--num_workers', metavar='N', type=int, default=None,
                       help='image-decoding processes (default: 0 for digits, else one per CPU, at most 32)')
    group.add_argument('--feature_cache', metavar='DIR', default=None,
                       help='folder to keep pooled features in across runs (default: none)')
    group.add_argument('--cache_check', choices=['sizes', 'listing'], default=None,
                       help='how cached features are matched to image files: sizes checks every file\'s name and '
                            'size (a stat per file, a few seconds for ImageNet); listing trusts folder '
                            'modification times, for the names and for a file listing kept in the cache, and '
                            f'misses files rewritten in place (default: {DEFAULT_CACHE_CHECK})')
    group.add_argument('--cache_dtype', choices=['float16', 'float32'], default='float16',
                       help='precision of cached features (default: %(default)s)')
    group.add_argument('--save_dir', metavar='DIR', default=None,
                       help='output folder (default: streaming_experiments/<expt_name>)')
    group.add_argument('--expt_name', metavar='NAME', default=None,
                       help='experiment name (default: slda_<dataset>_<plastic|fixed>)')
    group.add_argument('--save_preds', choices=['every', 'final', 'none'], default='every',
                       help='write the test probabilities (preds_*.pt) after every increment, after the last '
                            'only, or never; at ImageNet scale they total 1.1 GB (default: %(default)s)')
    group.add_argument('--plot', action=argparse.BooleanOptionalAction, default=True,
                       help='write learning_curve.png into the save folder at the end (default: on)')
    group.add_argument('--dist_timeout', metavar='SECONDS', type=int, default=7200,
                       help='under torchrun: how long a process waits for the others at each exchange, the end of '
                            'their feature extraction included; raise it when a share takes longer (default: '
                            '%(default)s)')
    group.add_argument('--resume', action='store_true',
                       help='continue an interrupted run in --save_dir from its last finished increment')
    group.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                       help='progress bars on standard error when it is a terminal (default: on)')


def complete_defaults(args):
    """Fill in the defaults that depend on the dataset and check the flags against each other."""
    if args.dataset is None:
        args.dataset = 'imagenet' if args.images_dir else 'digits'
    dataset = DATASETS[args.dataset]
    for name, default in DATASET_FLAG_DEFAULTS.items():
        if name in dataset.flags and getattr(args, name) is None:
            setattr(args, name, default)
        elif name not in dataset.flags and getattr(args, name) not in (None, False):
            users = ', '.join(entry.name for entry in DATASETS.values() if name in entry.flags)
            raise UserError(f'--{name} is for --dataset {users}; --dataset {args.dataset} does not use it')
    if args.streaming_update_sigma is None:
        args.streaming_update_sigma = dataset.plastic_covariance
    complete_protocol(args, dataset)
    complete_network(args, dataset)
    if args.expt_name is None:
        stream = '' if args.ordering == 'class_incremental' else f'_{args.ordering}_seed{args.ordering_seed}'
        args.expt_name = f'slda_{args.dataset}{stream}_{"plastic" if args.streaming_update_sigma else "fixed"}'
    if args.save_dir is None:
        args.save_dir = os.path.join('streaming_experiments', args.expt_name)
    if args.num_workers is None:
        args.num_workers = min(32, os.cpu_count() or 1) if dataset.image_files else 0
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    for flag in ('batch_size', 'image_size', 'num_workers', 'frame_stride', 'class_increment', 'images_per_batch',
                 'base_init_classes'):
        least = 0 if flag in ('num_workers', 'base_init_classes') else 1
        if getattr(args, flag) is not None and getattr(args, flag) < least:
            raise UserError(f'--{flag} must be at least {least}, got {getattr(args, flag)}')
    for flag in ('seed', 'class_order_seed', 'ordering_seed'):
        if getattr(args, flag) is not None and not 0 <= getattr(args, flag) < 2 ** 32:
            raise UserError(f'--{flag} must be in [0, 2**32), got {getattr(args, flag)}')
    if not 0 <= args.shrinkage <= 1:
        raise UserError(f'--shrinkage must be in [0, 1], got {args.shrinkage}')
    heads = args.heads.split(',')
    unknown = [head for head in heads if head not in HEADS]
    if unknown or 'slda' not in heads or len(set(heads)) != len(heads):
        raise UserError(f'--heads {args.heads}: a comma-separated list of {", ".join(HEADS)}, without repeats, '
                        f'slda included')
    if args.softmax_lr <= 0 or args.softmax_batch_size < 1:
        raise UserError(f'--softmax_lr must be positive and --softmax_batch_size at least 1, got '
                        f'{args.softmax_lr} and {args.softmax_batch_size}')


def complete_protocol(args, dataset):
    """The ordering, its flags, and the base initialisation."""
    args.ordering = args.ordering or dataset.ordering
    class_incremental = args.ordering == 'class_incremental'
    class_orderings = ('class_incremental', 'class_iid', 'class_instance')
    only_for = [(('class_incremental',), ['labels_dir', 'class_order_seed', 'num_classes', 'shuffle_data',
                                          'base_init_classes']),
                (('iid', 'class_iid', 'instance', 'class_instance'), ['ordering_seed']),
                (('iid', 'instance'), ['images_per_batch']), (class_orderings, ['class_increment'])]
    for orderings, names in only_for:
        for name in names:
            if getattr(args, name) not in (None, False) and args.ordering not in orderings:
                raise UserError(f'--{name} is for --ordering {", ".join(orderings)}, not {args.ordering}')
    if args.no_base_init and (args.base_init or args.base_init_classes is not None):
        raise UserError(f'--no_base_init and --{"base_init" if args.base_init else "base_init_classes"} '
                        f'contradict each other; give one')
    base_init = args.base_init or args.base_init_classes is not None or (dataset.base_init and not args.no_base_init)
    args.base_init, args.no_base_init = base_init, not base_init
    if args.class_increment is None and args.ordering in class_orderings:
        args.class_increment = dataset.class_increment
    if class_incremental:
        args.base_init_classes = (args.class_increment if args.base_init_classes is None else args.base_init_classes) \
            if base_init else 0
    else:
        args.ordering_seed = 0 if args.ordering_seed is None else args.ordering_seed
    if args.labels_dir is None and args.class_order_seed is None and class_incremental:
        args.labels_dir = next((folder for folder in support_folders() if all(
            os.path.exists(os.path.join(folder, name)) for name in protocol.label_file_names(args.dataset))), None)


def complete_network(args, dataset):
    """The dataset's default weights or checkpoint, when neither is given."""
    if args.base_init_ckpt is not None or args.weights is not None:
        return
    if dataset.default_weights:
        args.weights = dataset.default_weights
    elif dataset.default_checkpoint:
        candidates = [os.path.join(folder, dataset.default_checkpoint) for folder in support_folders()]
        found = [path for path in candidates if os.path.isfile(path)]
        if not found:
            raise UserError(f'--dataset {args.dataset} needs the network trained on the base classes: '
                            f'{dataset.default_checkpoint} is in none of {", ".join(candidates)}. '
                            f'image_files/README.md says what it is and where to get it; or pass '
                            f'--base_init_ckpt PATH, or --weights with torchvision weights cached locally')
        args.base_init_ckpt = found[0]


def check_inputs(args):
    dataset = DATASETS[args.dataset]
    if dataset.image_files and not args.images_dir:
        raise UserError(f'--dataset {args.dataset} needs --images_dir, the folder holding train/ and val/')
    if dataset.image_files and not os.path.isdir(args.images_dir):
        raise UserError(f'--images_dir {args.images_dir} does not exist or is not a folder; it must hold train/ '
                        f'and {args.test_split}/ with one sub-folder per class')
    if args.decode_on_device and not dataset.image_files:
        raise UserError('--decode_on_device is for image files (--dataset imagenet or imagefolder)')
    if args.base_init_ckpt and not os.path.isfile(args.base_init_ckpt):
        raise UserError(f'--base_init_ckpt {args.base_init_ckpt} not found. For ImageNet this is the ResNet-18 '
                        f'trained on the 100 base classes; image_files/README.md says what belongs there. '
                        f'Alternatively pass --weights with torchvision weights cached locally')
    if args.labels_dir and args.class_order_seed is not None:
        raise UserError(f'--class_order_seed {args.class_order_seed} and --labels_dir {args.labels_dir} both '
                        f'give a class order; give one')
    try:
        device_type = torch.device(args.device).type
    except (RuntimeError, ValueError):
        raise UserError(f'--device {args.device} is not a device name: use auto, cpu, cuda, cuda:N or mps') from None
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available.get(device_type, False):
        raise UserError(f'--device {args.device}: {device_type} is not available here'
                        f'{"" if device_type in available else " (this program runs on cpu, cuda or mps)"}; '
                        f'use --device cpu')
    if distributed.started_by_torchrun() and not args.feature_cache:
        raise UserError('under torchrun, --feature_cache DIR is needed: the processes share the extracted features '
                        'through it (a folder every process can reach), and rank 0 streams SLDA from it')
    if args.feature_cache and os.path.exists(args.feature_cache) and not os.path.isdir(args.feature_cache):
        raise UserError(f'--feature_cache {args.feature_cache} is a file; it must be a folder (or not exist yet)')


def list_splits(args):
    """The dataset's splits; with --cache_check listing, the file listing is kept in the feature cache."""
    listing_dir = listings_folder(args.feature_cache) if args.feature_cache and args.cache_check == 'listing' else None
    options = ListingOptions(args.images_dir, args.image_size, args.test_split, args.decode_on_device,
                             torch.device(args.device).type, listing_dir)
    return DATASETS[args.dataset].list_splits(options)


def class_order(args, splits):
    """(class indices in stream order, where the order came from, a warning or None); the order is None for
    orderings that draw their own."""
    if args.ordering != 'class_incremental':
        return None, f'{args.ordering} ordering, seed {args.ordering_seed}', None
    if args.labels_dir:
        return (protocol.class_order_from_label_files(splits, args.labels_dir), f'label files in {args.labels_dir}',
                None)
    source = 'sorted' if args.class_order_seed is None else f'permutation, seed {args.class_order_seed}'
    warning = None
    if DATASETS[args.dataset].paper_class_order:
        warning = (f'no label files ({", ".join(protocol.label_file_names(args.dataset))}) in --labels_dir or '
                   f'any of {", ".join(support_folders())}: the class order is {source}, so the base classes '
                   f'are neither the paper\'s nor those the base checkpoint was trained on, and results are not '
                   f'comparable to the paper\'s. image_files/README.md says where to get the files')
    return protocol.generated_class_order(splits.num_classes, args.class_order_seed), source, warning


def make_plan(args, splits, order):
    """The plan of --ordering; ``order`` is the class order of the class-incremental ordering. Sets
    --images_per_batch's default, which depends on the dataset's size."""
    train, test, clips = splits.train.labels, splits.test.labels, getattr(splits.train, 'clips', None)
    if args.ordering == 'class_incremental':
        return class_incremental_plan(args, splits, order)
    if args.ordering in ('instance', 'class_instance') and clips is None:
        raise UserError(f'--ordering {args.ordering} needs a dataset that knows its clips (core50); '
                        f'--dataset {args.dataset} does not')
    if args.ordering in ('iid', 'instance'):
        if args.images_per_batch is None:
            args.images_per_batch = DATASETS[args.dataset].images_per_batch or -(-len(train) // 10)
        if args.ordering == 'iid':
            return protocol.iid(train, test, args.images_per_batch, args.ordering_seed, args.base_init)
        return protocol.instance(train, clips, test, args.images_per_batch, args.ordering_seed, args.base_init)
    if args.class_increment > splits.num_classes:
        raise UserError(f'--class_increment {args.class_increment} is larger than the {splits.num_classes} classes')
    if args.ordering == 'class_iid':
        return protocol.class_iid(train, test, args.class_increment, args.ordering_seed, args.base_init)
    return protocol.class_instance(train, clips, test, args.class_increment, args.ordering_seed, args.base_init)


def class_incremental_plan(args, splits, order):
    streamed = splits.num_classes if args.num_classes is None else args.num_classes
    if not 1 <= streamed <= splits.num_classes:
        raise UserError(f'--num_classes {args.num_classes}: the dataset has {splits.num_classes} classes')
    for flag, value in (('--class_increment', args.class_increment), ('--base_init_classes', args.base_init_classes)):
        if value > streamed:
            raise UserError(f'{flag} {value} is larger than the {streamed} classes streamed')
    return protocol.class_incremental(splits.train.labels, splits.test.labels, order, streamed,
                                      args.base_init_classes, args.class_increment,
                                      shuffle_seed=args.seed if args.shuffle_data else None)


def build_extractor(args, device):
    amp = args.amp == 'on' or (args.amp == 'auto' and (device.type == 'cuda' or cpu_supports_bfloat16()))
    input_size = DATASETS[args.dataset].input_size or args.image_size
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # the random-init warning is printed by run() with the rest
        return FeatureExtractor(args.arch, args.extract_layer, args.weights, args.base_init_ckpt, device,
                                amp, input_size, args.seed, args.allow_partial_checkpoint)


def build_readers(args, splits, plan, device, files):
    """The train and test FeatureReaders, the extractor and the feature size.

    With every class of the plan in the cache the network is never needed; otherwise it is loaded now, so that
    a bad --arch, --extract_layer or checkpoint is reported before any work."""
    extractor = build_extractor(args, device)
    cache = None
    if args.feature_cache:
        dtype = getattr(torch, args.cache_dtype)
        key = cache_key(extractor.identity, splits, dtype)
        cache = FeatureCache(args.feature_cache, key, dtype, check_sizes=args.cache_check == 'sizes')
        cache.remove_leftovers(['train', splits.test_name])
        remove_stale_temporaries(listings_folder(args.feature_cache))
    decoding = {}
    if args.decode_on_device:
        from device_decode import BatchDecoder, collate_encoded
        decoding = dict(decoder=BatchDecoder(args.image_size, device), collate_fn=collate_encoded)
    extraction = Extraction(extractor, args.batch_size, args.num_workers, pin_memory=device.type == 'cuda',
                            progress=args.progress, **decoding)
    # Test features are kept in memory (scored after every batch), and training features too when a class
    # recurs in several batches, as in the iid and instance orderings.
    batch_classes = [np.unique(splits.train.labels[batch.train_indices]) for batch in plan]
    train_classes = np.unique(np.concatenate(batch_classes)).tolist()
    recurring = sum(map(len, batch_classes)) > len(train_classes)
    train, test = (FeatureReader(split, name, extraction, cache, keep=keep, files=files,
                                 skip_bad_images=args.skip_bad_images)
                   for split, name, keep in ((splits.train, 'train', recurring),
                                             (splits.test, splits.test_name, True)))
    test_classes = test.classes_of(np.concatenate([batch.test_indices for batch in plan]))
    cached_dims = {train.feature_dim(train_classes), test.feature_dim(test_classes)}
    feature_dim = cached_dims.pop() if len(cached_dims) == 1 and None not in cached_dims else extractor.load().dim
    if cache:
        cache.dim = feature_dim
    if args.input_feature_size is not None and args.input_feature_size != feature_dim:
        raise UserError(f'--input_feature_size {args.input_feature_size} does not match the network: '
                        f'{args.arch} {args.extract_layer} gives {feature_dim} features')
    return train, test, extractor, feature_dim


def describe_run(args, order, order_source, order_warning, extractor, feature_dim, device):
    """config.json: every argument, the class order, the network and the platform."""
    return {
        'arguments': vars(args), 'covariance': covariance_name(args), 'ordering': args.ordering,
        'class_order': None if order is None else order.tolist(), 'class_order_source': order_source,
        'class_order_warning': order_warning,
        'feature_dim': feature_dim, 'weights': extractor.weights_report, 'network': extractor.identity,
        'partial_checkpoint': extractor.partial or None,
        'autocast_bfloat16': extractor.amp,
        'versions': {'python': platform.python_version(), 'torch': torch.__version__,
                     'torchvision': version('torchvision'), 'numpy': np.__version__},
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
    }


def covariance_name(args):
    return 'plastic' if args.streaming_update_sigma else 'fixed'


def build_heads(args, slda, feature_dim, num_classes, device):
    """The output layers of --heads besides SLDA, by name."""
    makers = {'ncm': lambda: NearestClassMean(slda),
              'softmax_stream': lambda: SoftmaxStream(feature_dim, num_classes, args.softmax_lr,
                                                      args.softmax_batch_size, device),
              'offline': lambda: OfflineSoftmax(feature_dim, num_classes, device)}
    return {name: makers[name]() for name in args.heads.split(',') if name != 'slda'}


def fit_and_evaluate(slda, heads, batch, following, train, test, device):
    """Fit one batch of the plan with SLDA and the other ``heads``, evaluate each on the batch's test images and
    start reading the following batch's cached features; returns (the batch's summary row, SLDA's test
    probabilities)."""
    tick = time.perf_counter()
    X, y = train.take(batch.train_indices)
    extract_seconds = time.perf_counter() - tick
    if following:
        train.prefetch(following.train_indices)
    tick = time.perf_counter()
    X, y = X.to(device), y.to(device)
    if batch.base_init:
        slda.fit_base(X, y)
    else:
        slda.fit(X, y)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    fit_seconds = time.perf_counter() - tick

    tick = time.perf_counter()
    X_test, y_test = test.take(batch.test_indices)
    extract_seconds += time.perf_counter() - tick
    if following:
        test.prefetch(following.test_indices)
    tick = time.perf_counter()
    probabilities = slda.predict(X_test, return_probas=True)
    top1, top5 = topk_accuracy(probabilities, y_test)
    eval_seconds = time.perf_counter() - tick
    row = {'classes_seen': batch.classes_seen, 'train_images': len(y), 'test_images': len(y_test),
           'top1': top1, 'top5': top5, 'extract_seconds': round(extract_seconds, 3),
           'fit_seconds': round(fit_seconds, 3), 'eval_seconds': round(eval_seconds, 3)}
    if heads:
        row['heads'] = {}
    for name, head in heads.items():
        tick = time.perf_counter()
        head.fit(X, y)
        head_top1, head_top5 = topk_accuracy(head.decision_function(X_test), y_test)
        row['heads'][name] = {'top1': head_top1, 'top5': head_top5, 'samples_seen': head.samples_seen,
                              'seconds': round(time.perf_counter() - tick, 3)}
    return row, probabilities


def claim_folder(args, folder, group):
    """Rank 0 (or the only process) claims the save folder; under torchrun the others learn whether it could.
    Returns whether the folder holds a run to continue."""
    refusal, continuing = None, False
    if group is None or group.rank == 0:
        try:
            continuing = folder.claim(vars(args), args.resume)
        except UserError as e:
            refusal = e
    if group is not None:
        message = group.broadcast(None if refusal is None else str(refusal))
        if message and refusal is None:
            raise UserError(message)
    if refusal:
        raise refusal
    return continuing


def run(args):
    """The experiment of ``args``; returns its summary (None on the processes of a torchrun group but rank 0,
    which only extract features)."""
    started = time.perf_counter()
    check_inputs(args)
    group = distributed.Group(args.dist_timeout, cuda=torch.device(args.device).type == 'cuda') \
        if distributed.started_by_torchrun() else None
    try:
        return stream(args, group, started)
    finally:
        if group:
            group.close()


def stream(args, group, started):
    """Build the stream and the model, then for each batch of the plan fit, evaluate and record."""
    splits = list_splits(args)
    order, order_source, order_warning = class_order(args, splits)
    if order_warning:
        print(f'WARNING: {order_warning}', file=sys.stderr, flush=True)
    plan = make_plan(args, splits, order)
    offline = read_offline_accuracies(args.offline_accuracies, len(plan))
    files = BackgroundFiles()
    folder = ResultsFolder(args.save_dir, files)
    device = torch.device(args.device)
    if group and device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', group.local_rank)
    try:
        continuing = claim_folder(args, folder, group)
        train, test, extractor, feature_dim = build_readers(args, splits, plan, device, files)
        per_process = None
        if group:
            per_process = distributed.extract_shares(group, {'train': train, splits.test_name: test}, files)
            if group.rank != 0:
                return None
        config = describe_run(args, order, order_source, order_warning, extractor, feature_dim, device)
        config['test_images'] = test_images_digest(splits.test, plan)
        if continuing:
            folder.check_resume(config, splits, plan)
        folder.save_config(config, splits, order, plan)
        announce(args, splits, plan, order_source, extractor, feature_dim, device)
        slda = StreamingLDA(feature_dim, splits.num_classes, shrinkage_param=args.shrinkage,
                            streaming_update_sigma=args.streaming_update_sigma, device=device,
                            dtype=getattr(torch, args.slda_dtype), mask_unseen_classes=args.mask_unseen_classes)
        heads = build_heads(args, slda, feature_dim, splits.num_classes, device)
        if continuing and heads:
            raise UserError(f'--resume with --heads {args.heads}: only SLDA\'s state is saved after each '
                            f'increment; start a new run (another --save_dir) to compare output layers')
        first = folder.resume(plan, slda) if args.resume else 0
        if first:
            print(f'resuming after increment {first}/{len(plan)} ({plan[first - 1].classes_seen} classes seen)')
        summary = functools.partial(make_summary, offline=offline, readers=(train, test), started=started,
                                    prepare_seconds=time.perf_counter() - started,
                                    skipped_before=folder.skipped_before, images_per_process=per_process)
        if first < len(plan):
            train.prefetch(plan[first].train_indices)
            test.prefetch(plan[first].test_indices)
        for batch, following in zip(plan[first:], plan[first + 1:] + [None]):
            crash_point('increment_start')
            row, probabilities = fit_and_evaluate(slda, heads, batch, following, train, test, device)
            save_preds = args.save_preds == 'every' or (args.save_preds == 'final' and following is None)
            folder.record(batch, row, probabilities, slda.checkpoint(), save_preds, summary)
            print_batch(batch, len(plan), row)
        summary = folder.finish(slda.checkpoint(), summary)
    finally:
        files.close()
        folder.release()
    omega_text = ''
    if summary['omega_all']:
        omega_text = f'; Omega_all top-1 {summary["omega_all"]["top1"]:.3f}, top-5 {summary["omega_all"]["top5"]:.3f}'
    print(f'final top-1 {summary["final_top1"]:.2f}%, top-5 {summary["final_top5"]:.2f}% on {plan[-1].classes_seen} '
          f'classes{omega_text}; results in {args.save_dir}')
    if args.plot:
        plot_learning_curve(args.save_dir)
    return summary


def print_batch(batch, batches, row):
    print(f'[{batch.number}/{batches}] {batch.classes_seen:5d} classes seen | +{row["train_images"]} train '
          f'images | top-1 {row["top1"]:6.2f}% top-5 {row["top5"]:6.2f}% | extract '
          f'{row["extract_seconds"]:.1f}s fit {row["fit_seconds"]:.2f}s eval {row["eval_seconds"]:.2f}s' +
          ''.join(f' | {name} {head["top1"]:.2f}%/{head["top5"]:.2f}%' for name, head in row.get('heads', {}).items()),
          flush=True)


def announce(args, splits, plan, order_source, extractor, feature_dim, device):
    """What the run streams, with which network and covariance, on standard output (a partial checkpoint on
    standard error)."""
    if extractor.partial:
        print(f'WARNING: partial checkpoint (--allow_partial_checkpoint): {len(extractor.partial)} tensors '
              f'that {args.extract_layer} depends on keep their random initialisation: '
              f'{", ".join(extractor.partial[:6])}{" ..." if len(extractor.partial) > 6 else ""}',
              file=sys.stderr, flush=True)
    print(f'{splits.name}: {splits.num_classes} classes, {len(splits.train)} train / {len(splits.test)} test '
          f'images; streaming {plan[-1].classes_seen} classes as {[b.classes_seen for b in plan]}; class order '
          f'{order_source}')
    print(f'{args.arch} {args.extract_layer}: {feature_dim}-d features on {device} '
          f'({"bfloat16 autocast" if extractor.amp else "float32"}); {extractor.weights_report}')
    print(f'covariance: {covariance_name(args)} (' + ('--streaming_update_sigma: updated by every sample'
          if args.streaming_update_sigma else '--no-streaming_update_sigma: the base initialisation\'s, kept')
          + f'); shrinkage {args.shrinkage}; accuracies in percent')


def plot_learning_curve(save_dir):
    """learning_curve.png in the save folder; a failure to plot is reported and never fails the run."""
    import plot_results     # here: it imports matplotlib, which a run without the figure does not need
    try:
        plot_results.plot_runs([plot_results.load_run(save_dir)], os.path.join(save_dir, 'learning_curve.png'))
    except Exception as e:      # noqa: BLE001 - the results are written; the figure is a convenience
        print(f'warning: learning_curve.png not written ({type(e).__name__}: {e}); the results are complete',
              file=sys.stderr)


def main(argv=None):
    try:
        args = parse_args(argv)
        run(args)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except BadImageError as e:
        print(f'error: {e}; fix or remove it, or pass --skip_bad_images', file=sys.stderr)
        return 2
    except distributed.ProcessFailed as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except PartialCheckpointError as e:
        print(f'error: {e} Pass --allow_partial_checkpoint to use it anyway', file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted; finished increments are saved, rerun with --resume to continue', file=sys.stderr)
        return 130
    except OSError as e:
        where = f' ({e.filename})' if e.filename else ''
        print(f'error: {e.strerror or e}{where}; finished increments are saved, rerun with --resume once '
              f'fixed', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
