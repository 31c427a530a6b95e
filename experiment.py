"""Deep SLDA class-incremental streaming experiment.

A frozen CNN turns images into pooled features; StreamingLDA is initialised on the first classes
(fit_base) and then learns the remaining classes a few at a time, one pass over each image. After every
increment it is evaluated on the test images of all classes seen so far, and the probabilities,
accuracies and model are saved.

    python experiment.py                                   # handwritten digits, runs in seconds
    python experiment.py --dataset imagenet --images_dir /data/imagenet \\
        --base_init_ckpt image_files/imagenet_100_class_ckpt.pth --streaming_update_sigma
"""
import argparse
import os
import platform
import sys
import time
import warnings
from importlib.metadata import version

import numpy as np
import torch

import data
from features import FeatureExtractor, FeatureStore, cache_key, cpu_supports_bfloat16
from slda_model import StreamingLDA
from utils import BackgroundFiles, UserError, crash_point, load_json, save_json, save_tensor, topk_accuracy

DEFAULT_INCREMENT = {'digits': 2, 'imagenet': 100, 'imagefolder': 10}
IMAGE_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'image_files')
IMAGENET_CHECKPOINT = os.path.join(IMAGE_FILES, 'imagenet_100_class_ckpt.pth')
# Arguments that do not change any number a run produces; everything else must match to --resume.
ARGS_FREE_TO_CHANGE = {'resume', 'num_workers', 'progress', 'save_dir', 'expt_name', 'skip_bad_images',
                       'save_preds', 'cache_check'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group('data')
    group.add_argument('--dataset', choices=['digits', 'imagenet', 'imagefolder'], default='digits',
                       help='digits: scikit-learn\'s bundled handwritten digits (no download); imagenet: '
                            'ImageNet-1K as ImageFolder train/ and val/; imagefolder: your own train/ and '
                            'val/ class folders (default: %(default)s)')
    group.add_argument('--images_dir', metavar='DIR', help='folder holding train/ and val/ (imagenet, imagefolder)')
    group.add_argument('--test_split', metavar='NAME', default='val',
                       help='name of the test folder (default: %(default)s)')
    group.add_argument('--image_size', metavar='N', type=int, default=224,
                       help='centre-crop size; images are first resized to size / 0.875 (default: %(default)s)')
    group.add_argument('--labels_dir', metavar='DIR', default=None,
                       help='folder with <dataset>_train_labels.npy and <dataset>_val_labels.npy giving the '
                            'class order (default: this project\'s image_files/ if it holds them)')
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
    group = parser.add_argument_group('network')
    group.add_argument('--arch', metavar='NAME', default='resnet18',
                       help='torchvision classification model (default: %(default)s)')
    group.add_argument('--extract_layer', metavar='NAME', default='layer4.1',
                       help='layer whose output, mean-pooled over space, is the feature (default: %(default)s)')
    group.add_argument('--base_init_ckpt', metavar='PATH', default=None,
                       help='checkpoint of the network trained on the base classes (default for imagenet: '
                            'image_files/imagenet_100_class_ckpt.pth in this project)')
    group.add_argument('--weights', metavar='NAME', default=None,
                       help='a torchvision weight set already in the local torch cache, e.g. IMAGENET1K_V1')
    group.add_argument('--input_feature_size', metavar='N', type=int, default=None,
                       help='expected feature size; checked against the network (default: found)')
    group.add_argument('--amp', choices=['auto', 'on', 'off'], default='auto',
                       help='bfloat16 autocast for the network: auto uses it on CUDA and on CPUs with '
                            'bfloat16 instructions (default: %(default)s)')
    group = parser.add_argument_group('protocol and model')
    group.add_argument('--class_increment', metavar='N', type=int, default=None,
                       help='classes per increment (default: 2 for digits, 100 for imagenet, 10 for imagefolder)')
    group.add_argument('--base_init_classes', metavar='N', type=int, default=None,
                       help='classes in the base initialisation (default: one increment)')
    group.add_argument('--no_base_init', action='store_true', help='stream every class, no fit_base')
    group.add_argument('--streaming_update_sigma', action=argparse.BooleanOptionalAction, default=True,
                       help='plastic covariance, updated by every sample; --no-streaming_update_sigma keeps '
                            'the base-initialisation covariance fixed (default: plastic)')
    group.add_argument('--shrinkage', metavar='EPS', type=float, default=1e-4,
                       help='covariance shrinkage (default: %(default)s)')
    group.add_argument('--mask_unseen_classes', action='store_true',
                       help='give classes not seen yet a score of -inf (the paper does not)')
    group.add_argument('--slda_dtype', choices=['float32', 'float64'], default='float32',
                       help='precision of the SLDA state (default: %(default)s)')
    group.add_argument('--shuffle_data', action='store_true', help='shuffle the images within each increment')
    group.add_argument('--offline_accuracies', metavar='FILE', default=None,
                       help='JSON file {"top1": [...], "top5": [...]} with an offline model\'s accuracy (0-1) '
                            'after each increment; adds Omega_all (mean of ours / offline) to summary.json')
    group.add_argument('--seed', metavar='N', type=int, default=0,
                       help='seed for shuffling and random initialisation (default: %(default)s)')
    group = parser.add_argument_group('running')
    group.add_argument('--batch_size', metavar='N', type=int, default=256,
                       help='images per network batch (default: %(default)s)')
    group.add_argument('--device', metavar='DEV', default='auto',
                       help='auto, cpu, cuda or cuda:N (default: %(default)s)')
    group.add_argument('--num_workers', metavar='N', type=int, default=None,
                       help='image-decoding processes (default: 0 for digits, else one per CPU, at most 32)')
    group.add_argument('--feature_cache', metavar='DIR', default=None,
                       help='folder to keep pooled features in across runs (default: none)')
    group.add_argument('--cache_check', choices=['sizes', 'listing'], default='sizes',
                       help='how cached features are matched to image files: sizes checks every file\'s name and '
                            'size (a stat per file, a few seconds for ImageNet); listing trusts folder '
                            'modification times, for the names and for a file listing kept in the cache, and '
                            'misses files rewritten in place (default: %(default)s)')
    group.add_argument('--cache_dtype', choices=['float16', 'float32'], default='float16',
                       help='precision of cached features (default: %(default)s)')
    group.add_argument('--save_dir', metavar='DIR', default=None,
                       help='output folder (default: streaming_experiments/<expt_name>)')
    group.add_argument('--expt_name', metavar='NAME', default=None,
                       help='experiment name (default: slda_<dataset>_<plastic|fixed>)')
    group.add_argument('--save_preds', choices=['every', 'final', 'none'], default='every',
                       help='write the test probabilities (preds_*.pt) after every increment, after the last '
                            'only, or never; at ImageNet scale they total 1.1 GB (default: %(default)s)')
    group.add_argument('--resume', action='store_true',
                       help='continue an interrupted run in --save_dir from its last finished increment')
    group.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                       help='progress bars on standard error when it is a terminal (default: on)')
    parser.add_argument('--version', action='version',
                        version=f'torch {torch.__version__}, torchvision {version("torchvision")}')
    args = parser.parse_args(argv)
    complete_defaults(args)
    return args


def complete_defaults(args):
    if args.class_increment is None:
        args.class_increment = DEFAULT_INCREMENT[args.dataset]
    if args.base_init_classes is None:
        args.base_init_classes = 0 if args.no_base_init else args.class_increment
    elif args.no_base_init:
        raise UserError('--no_base_init and --base_init_classes contradict each other; give one')
    if args.expt_name is None:
        args.expt_name = f'slda_{args.dataset}_{"plastic" if args.streaming_update_sigma else "fixed"}'
    if args.save_dir is None:
        args.save_dir = os.path.join('streaming_experiments', args.expt_name)
    if args.labels_dir is None and all(os.path.exists(os.path.join(IMAGE_FILES, name))
                                       for name in data.label_file_names(args.dataset)):
        args.labels_dir = IMAGE_FILES
    if args.dataset == 'imagenet' and args.base_init_ckpt is None and args.weights is None:
        args.base_init_ckpt = IMAGENET_CHECKPOINT
    if args.num_workers is None:
        args.num_workers = 0 if args.dataset == 'digits' else min(32, os.cpu_count() or 1)
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.batch_size < 1:
        raise UserError(f'--batch_size must be at least 1, got {args.batch_size}')
    if not 0 <= args.shrinkage <= 1:
        raise UserError(f'--shrinkage must be in [0, 1], got {args.shrinkage}')


def check_inputs(args):
    if args.dataset != 'digits' and not args.images_dir:
        raise UserError(f'--dataset {args.dataset} needs --images_dir, the folder holding train/ and val/')
    if args.base_init_ckpt and not os.path.isfile(args.base_init_ckpt):
        raise UserError(f'--base_init_ckpt {args.base_init_ckpt} not found. For ImageNet this is the ResNet-18 '
                        f'trained on the 100 base classes; image_files/README.md says what belongs there. '
                        f'Alternatively pass --weights with torchvision weights cached locally')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f'--device {args.device}: CUDA is not available here; use --device cpu')


def prepare_save_dir(args):
    """Create the output folder and prove it writable before any work; check a resume is consistent."""
    try:
        os.makedirs(args.save_dir, exist_ok=True)
        probe = os.path.join(args.save_dir, '.write_test')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise UserError(f'cannot write to --save_dir {args.save_dir}: {e.strerror}') from None
    config_path = os.path.join(args.save_dir, 'config.json')
    if not os.path.exists(config_path):
        return
    if not args.resume:
        raise UserError(f'{args.save_dir} already holds a run (config.json); pass --resume to continue it, '
                        f'or choose another --save_dir / --expt_name')
    for name in os.listdir(args.save_dir):          # temporary files of writes that a crash interrupted
        if name.startswith('.') and name.endswith('.tmp'):
            os.remove(os.path.join(args.save_dir, name))
    saved = load_json(config_path)['arguments']
    current = vars(args).copy()
    for arguments in (saved, current):   # where the cache lives is free; whether features are cached is not
        arguments['feature_cache'] = arguments.get('feature_cache') is not None
    differing = sorted(k for k in set(saved) | set(current)
                       if k not in ARGS_FREE_TO_CHANGE and saved.get(k) != current.get(k))
    if differing:
        details = '; '.join(f'--{k}: saved {saved.get(k)!r}, now {current.get(k)!r}' for k in differing)
        raise UserError(f'cannot --resume {args.save_dir} with different settings ({details})')


def increment_name(seen):
    return f'min_trained_0_max_trained_{seen}'


def last_finished_increment(save_dir, plan):
    """Index in ``plan`` of the last increment whose model file exists (it is written last), or -1."""
    finished = -1
    for i, seen in enumerate(plan):
        if os.path.exists(os.path.join(save_dir, f'slda_model_weights_{increment_name(seen)}.pth')):
            finished = i
    return finished


def build_splits(args):
    if args.dataset == 'digits':
        if args.decode_on_device:
            raise UserError('--decode_on_device is for image files (--dataset imagenet or imagefolder)')
        return data.digits_splits()
    list_class, decoder = data.ImageList, 'PIL'
    if args.decode_on_device:
        from device_decode import EncodedImageList    # here: it imports torchvision, which cached reruns skip
        list_class, decoder = EncodedImageList, f'torchvision on {torch.device(args.device).type}'
    listing_dir = None       # --cache_check listing trusts folder times for the listing as well
    if args.feature_cache and args.cache_check == 'listing':
        listing_dir = os.path.join(args.feature_cache, 'listings')
    return data.image_folder_splits(args.dataset, args.images_dir, args.image_size, args.test_split,
                                    list_class, decoder, listing_dir)


def build_extractor(args, device):
    amp = args.amp == 'on' or (args.amp == 'auto' and (device.type == 'cuda' or cpu_supports_bfloat16()))
    input_size = data.DIGITS_SIZE if args.dataset == 'digits' else args.image_size
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # the random-init warning is printed by run() with the rest
        return FeatureExtractor(args.arch, args.extract_layer, args.weights, args.base_init_ckpt, device,
                                amp, input_size, args.seed)


def run(args):
    check_inputs(args)
    started = time.perf_counter()
    splits = build_splits(args)
    if args.labels_dir:
        order = data.class_order_from_label_files(splits, args.labels_dir)
        order_source = f'label files in {args.labels_dir}'
    else:
        order = data.generated_class_order(splits.num_classes, args.class_order_seed)
        order_source = 'sorted' if args.class_order_seed is None else f'permutation, seed {args.class_order_seed}'
    stream_classes = splits.num_classes if args.num_classes is None else args.num_classes
    if not 1 <= stream_classes <= splits.num_classes:
        raise UserError(f'--num_classes {args.num_classes}: the dataset has {splits.num_classes} classes')
    plan = data.plan_increments(stream_classes, args.base_init_classes, args.class_increment)
    offline = read_offline_accuracies(args.offline_accuracies, len(plan))
    prepare_save_dir(args)
    data.save_class_order(splits, order, args.save_dir)

    device = torch.device(args.device)
    extractor = build_extractor(args, device)
    key = cache_key(extractor, splits, getattr(torch, args.cache_dtype))
    files = BackgroundFiles()
    store_options = dict(extractor=extractor, batch_size=args.batch_size, num_workers=args.num_workers,
                         pin_memory=device.type == 'cuda', cache_dir=args.feature_cache, cache_key=key,
                         cache_dtype=getattr(torch, args.cache_dtype), skip_bad_images=args.skip_bad_images,
                         progress=args.progress, files=files, cache_check=args.cache_check)
    if args.decode_on_device:
        from device_decode import BatchDecoder, collate_encoded
        store_options.update(decoder=BatchDecoder(args.image_size, device), collate_fn=collate_encoded)
    train_store = FeatureStore(splits.train, 'train', keep=False, **store_options)
    test_store = FeatureStore(splits.test, args.test_split, keep=True, **store_options)
    # With every class in the cache the network is never needed; otherwise it is loaded now, so that a bad
    # --arch, --extract_layer or checkpoint is reported before any work.
    streamed = order[:plan[-1]].tolist()
    cached_dims = {store.cached_feature_dim(streamed) for store in (train_store, test_store)}
    feature_dim = cached_dims.pop() if len(cached_dims) == 1 and None not in cached_dims else extractor.load().dim
    if args.input_feature_size is not None and args.input_feature_size != feature_dim:
        raise UserError(f'--input_feature_size {args.input_feature_size} does not match the network: '
                        f'{args.arch} {args.extract_layer} gives {feature_dim} features')
    save_json(os.path.join(args.save_dir, 'config.json'), {
        'arguments': vars(args), 'class_order': order.tolist(), 'class_order_source': order_source,
        'feature_dim': feature_dim, 'weights': extractor.weights_report, 'autocast_bfloat16': extractor.amp,
        'versions': {'python': platform.python_version(), 'torch': torch.__version__,
                     'torchvision': version('torchvision'), 'numpy': np.__version__},
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
    })
    print(f'{splits.name}: {splits.num_classes} classes, {len(splits.train)} train / {len(splits.test)} test '
          f'images; streaming {stream_classes} classes as {plan}; class order {order_source}')
    print(f'{args.arch} {args.extract_layer}: {feature_dim}-d features on {device} '
          f'({"bfloat16 autocast" if extractor.amp else "float32"}); {extractor.weights_report}')
    slda = StreamingLDA(feature_dim, splits.num_classes, shrinkage_param=args.shrinkage,
                        streaming_update_sigma=args.streaming_update_sigma, device=device,
                        dtype=getattr(torch, args.slda_dtype), mask_unseen_classes=args.mask_unseen_classes)

    first = 0
    increments = []
    accuracies = {'seen_classes_top1': [], 'seen_classes_top5': []}
    summary_path = os.path.join(args.save_dir, 'summary.json')
    if args.resume:
        done = last_finished_increment(args.save_dir, plan)
        if done >= 0:
            name = increment_name(plan[done])
            slda.load_model(args.save_dir, f'slda_model_weights_{name}')
            accuracies = load_json(os.path.join(args.save_dir, f'accuracies_{name}.json'))
            if os.path.exists(summary_path):
                increments = load_json(summary_path)['increments'][:done + 1]
            first = done + 1
            print(f'resuming after increment {done + 1}/{len(plan)} ({plan[done]} classes seen)')

    def new_classes(i):
        return order[plan[i - 1] if i else 0:plan[i]].tolist()

    def seen_classes(i):
        return order[:plan[i]].tolist()

    def prefetch(store, classes, i):
        """Read increment i's cached features of ``store`` on the file thread; each store starts on increment
        i + 1 once increment i has taken its own."""
        if i < len(plan):
            store.prefetch(classes(i))

    prepare_seconds = time.perf_counter() - started
    try:
        prefetch(train_store, new_classes, first)
        prefetch(test_store, seen_classes, first)
        for i in range(first, len(plan)):
            crash_point('increment_start')
            tick = time.perf_counter()
            X, indices = train_store.get(new_classes(i))
            y = torch.from_numpy(splits.train.labels[indices.numpy()])
            extract_seconds = time.perf_counter() - tick
            prefetch(train_store, new_classes, i + 1)
            if args.shuffle_data:
                permutation = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed * 100_003 + i))
                X, y = X[permutation], y[permutation]
            tick = time.perf_counter()
            X, y = X.to(device), y.to(device)
            if i == 0 and args.base_init_classes:
                slda.fit_base(X, y)
            else:
                slda.fit(X, y)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            fit_seconds = time.perf_counter() - tick

            tick = time.perf_counter()
            X_test, test_indices = test_store.get(seen_classes(i))
            extract_seconds += time.perf_counter() - tick
            prefetch(test_store, seen_classes, i + 1)
            tick = time.perf_counter()
            probabilities = slda.predict(X_test, return_probas=True)
            top1, top5 = topk_accuracy(probabilities, splits.test.labels[test_indices.numpy()])
            eval_seconds = time.perf_counter() - tick
            accuracies = {'seen_classes_top1': accuracies['seen_classes_top1'] + [top1],
                          'seen_classes_top5': accuracies['seen_classes_top5'] + [top5]}
            increments.append({'classes_seen': plan[i], 'train_images': len(y), 'test_images': len(test_indices),
                               'top1': top1, 'top5': top5, 'extract_seconds': round(extract_seconds, 3),
                               'fit_seconds': round(fit_seconds, 3), 'eval_seconds': round(eval_seconds, 3)})

            # Written on the file thread, in this order, while the next increment computes; the model file
            # comes last and marks the increment finished (a failed write stops the ones after it).
            name = increment_name(plan[i])
            if args.save_preds == 'every' or (args.save_preds == 'final' and i == len(plan) - 1):
                files.write(save_tensor, os.path.join(args.save_dir, f'preds_{name}.pt'), probabilities)
            files.write(save_json, os.path.join(args.save_dir, f'accuracies_{name}.json'), accuracies)
            files.write(save_json, summary_path, make_summary(increments, offline, train_store, test_store,
                                                               started, prepare_seconds, finished=False))
            files.write(save_tensor, os.path.join(args.save_dir, f'slda_model_weights_{name}.pth'),
                        slda.checkpoint())
            print(f'[{i + 1}/{len(plan)}] {plan[i]:5d} classes seen | +{len(y)} train images | '
                  f'top-1 {top1:.4f} top-5 {top5:.4f} | extract {extract_seconds:.1f}s fit {fit_seconds:.2f}s '
                  f'eval {eval_seconds:.2f}s', flush=True)

        files.write(save_tensor, os.path.join(args.save_dir, 'slda_model_weights_final.pth'), slda.checkpoint())
        summary = make_summary(increments, offline, train_store, test_store, started, prepare_seconds,
                               finished=True)
        files.write(save_json, summary_path, summary)
        files.finish()
    finally:
        files.close()
    omega_text = ''
    if summary['omega_all']:
        omega_text = f'; Omega_all top-1 {summary["omega_all"]["top1"]:.3f}, top-5 {summary["omega_all"]["top5"]:.3f}'
    print(f'final top-1 {summary["final_top1"]:.4f}, top-5 {summary["final_top5"]:.4f} on {plan[-1]} classes'
          f'{omega_text}; results in {args.save_dir}')
    return summary


def read_offline_accuracies(path, num_increments):
    """{"top1": [...], "top5": [...]}, one accuracy in (0, 1] per increment, or None without a file."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UserError(f'--offline_accuracies {path} not found')
    offline = load_json(path)
    for key in ('top1', 'top5'):
        values = offline.get(key) if isinstance(offline, dict) else None
        if not isinstance(values, list) or len(values) != num_increments or \
                not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in values):
            raise UserError(f'--offline_accuracies {path}: "{key}" must list {num_increments} accuracies in '
                            f'(0, 1], one per increment')
    return offline


def omega(increments, offline):
    """Omega_all of Hayes et al.: the mean over increments so far of our accuracy / the offline model's."""
    if offline is None or not increments:
        return None
    return {key: sum(row[key] / offline[key][i] for i, row in enumerate(increments)) / len(increments)
            for key in ('top1', 'top5')}


def make_summary(increments, offline, train_store, test_store, started, prepare_seconds, finished):
    extract = sum(row['extract_seconds'] for row in increments)
    images = train_store.images_extracted + test_store.images_extracted
    return {
        'finished': finished,
        'increments': list(increments),
        'final_top1': increments[-1]['top1'] if increments else None,
        'final_top5': increments[-1]['top5'] if increments else None,
        'omega_all': omega(increments, offline),
        'seconds': {'prepare': round(prepare_seconds, 3), 'extract': round(extract, 3),
                    'fit': round(sum(row['fit_seconds'] for row in increments), 3),
                    'evaluate': round(sum(row['eval_seconds'] for row in increments), 3),
                    'total_this_process': round(time.perf_counter() - started, 3)},
        'images_extracted_this_process': images,
        'images_per_second': round(images / extract, 1) if extract > 0 and images else None,
        'skipped_images': train_store.skipped + test_store.skipped,
    }


def main(argv=None):
    try:
        args = parse_args(argv)
        run(args)
    except UserError as e:
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
