"""Write the features of a run's images to one file, for use outside this project (other output layers, notebooks).

    python export_features.py features.npz --dataset imagefolder --images_dir DIR --arch timm:vit_small_patch14_dinov2.lvd142m --feature_cache cache/

Takes experiment.py's options: with the same data, network and --feature_cache as a run, the features are read
from the cache that run filled (what is missing is extracted, and cached). The output layers' flags and those of a
run's own files (--save_dir, --resume, --save_preds, ...) are refused. The stream's flags are taken, since they
choose and check the plan whose images are written, though some (--shuffle_data, --class_increment, ...) leave
the file as it is; --class_increment and --base_init_classes default to 1 here, which fits a dataset of any
number of classes.
The file (.npz, read with ``np.load(path)``, no pickles; or .pt, read with ``torch.load(path, weights_only=True)``)
holds, for each split (``train``, and ``test`` for the dataset's test split):

    {split}_features   (n, d) float32, in the run's stream plan's images, dataset order; for test, with the test
                       images of the classes --ood_classes holds out (the run's novelty evaluation uses them)
    {split}_labels     (n,) int64, class indices into class_names
    {split}_paths      (n,) image paths relative to --images_dir (image indices for the digits)
    class_names        (C,)
    network            a JSON string: the network, layer, pooling, weights and preprocessing the features come from

Images skipped as unreadable (--skip_bad_images) have no row.
"""
import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

import cli
from errors import ProjectError, error_line
from experiment import class_order, held_out_test_images, list_splits, make_plan
from features import build_readers
from options import SettingError
from utils import BackgroundFiles, check_output_file

FORMATS = ('.npz', '.pt')


# experiment.py's flags that change nothing in the file written, refused (help hidden) rather than ignored: every
# output layer's, and those of what a run writes besides its features.
UNUSED_SECTIONS = ('output layers',)
UNUSED_RUNNING = frozenset({'save_dir', 'expt_name', 'save_preds', 'offline_accuracies', 'plot', 'resume',
                            'dist_timeout'})


# The stream's batch sizes, which export_config sets to 1 class where none is given: their help here.
EXPORT_DEFAULTS = {'classes_per_batch': 'classes per batch of the plan',
                   'base_init_classes': 'classes in the base initialisation'}


def why_unused(section, setting):
    """Why the flag of ``setting`` (in --help's ``section``) does not apply to an export; None where it does."""
    if section in UNUSED_SECTIONS:
        return 'the features exported are the network\'s, before any output layer' + \
            (': project them with projection.py' if setting == 'random_projection' else '')
    if setting in UNUSED_RUNNING:
        return 'it writes the features file alone, no run folder'
    return None


def build_parser():
    """experiment.py's parser with the output file, and its flags that do not apply to an export hidden from
    --help; returns (parser, {setting: why its flag does not apply})."""
    parser = cli.build_parser(__doc__)
    parser.add_argument('output', help='the file to write: .npz or .pt')
    unused = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            why = why_unused(group.title, action.dest)
            if why:
                unused[action.dest] = why
                action.help = argparse.SUPPRESS
            elif action.dest in EXPORT_DEFAULTS:
                action.help = f'{EXPORT_DEFAULTS[action.dest]} (default here: 1; any value the classes allow exports ' \
                              f'the same images)'
    return parser, unused


def refuse_unused(parser, unused, argv, given):
    """SettingError naming the first flag in ``argv`` (parsed as ``given``) that does not apply to an export."""
    for word in argv:
        action = parser._option_string_actions.get(word.split('=')[0])
        if action is not None and action.dest in unused and action.dest in given:
            raise SettingError(action.dest, f'{word.split("=")[0]} does not apply to export_features.py '
                                            f'({unused[action.dest]}); leave it out')


def export_config(given):
    """``cli.make_config(**given)`` with the stream's batch sizes at 1 class where ``given`` sets none: any value
    exports the same images, and the dataset's default (10 for a folder) would refuse a dataset of fewer
    classes."""
    config = cli.make_config(**given)
    options = config.stream.options
    smallest = {name: 1 for name in EXPORT_DEFAULTS
                if given.get(name) is None and getattr(options, name, None) is not None}
    if not smallest:
        return config
    return dataclasses.replace(config, stream=dataclasses.replace(
        config.stream, options=dataclasses.replace(options, **smallest)))


def export(config, output):
    """Extract or read the features of ``config``'s run and write them to ``output`` (.npz or .pt); returns
    {split: number of images written}. Raises SettingError for another extension, InputError for a file that
    cannot be written (utils.check_output_file), both before any work."""
    if os.path.splitext(output)[1] not in FORMATS:
        raise SettingError('output', f'{output}: the output file must end in {" or ".join(FORMATS)}')
    check_output_file(output)
    splits = list_splits(config)
    order = class_order(config, splits)[0]
    plan = make_plan(config, splits, order)
    held_out = {'train': np.array([], dtype=np.int64), 'test': held_out_test_images(config, splits, order)}
    files = BackgroundFiles()
    try:
        train, test, extractor, _ = build_readers(config, splits, plan, torch.device(config.run.device), files)
        arrays = {}
        for reader, key in ((train, 'train'), (test, 'test')):
            wanted = np.unique(np.concatenate([getattr(batch, f'{key}_indices') for batch in plan] + [held_out[key]]))
            features, present = reader.read_classes(reader.classes_of(wanted))
            rows = torch.from_numpy(np.isin(present.numpy(), wanted))
            present = present[rows].numpy()
            arrays[f'{key}_features'] = features[rows].float().numpy()
            arrays[f'{key}_labels'] = reader.split.labels[present].astype(np.int64)
            arrays[f'{key}_paths'] = np.array([reader.split.image_name(int(i)) for i in present])
    finally:
        files.close()
    arrays['class_names'] = np.array(splits.classes)
    arrays['network'] = np.array(extractor.identity)
    if output.endswith('.npz'):
        np.savez(output, **arrays)
    else:
        torch.save({key: torch.from_numpy(value) if value.dtype.kind in 'fi' else value.tolist()
                    for key, value in arrays.items()}, output)
    return {key: len(arrays[f'{key}_labels']) for key in ('train', 'test')}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser, unused = build_parser()
    try:
        given = vars(parser.parse_args(argv))
        output = given.pop('output')
        refuse_unused(parser, unused, argv, given)
        config = export_config(given)
        counts = export(config, output)
    except ProjectError as e:
        print(error_line(e), file=sys.stderr)
        return e.exit_code
    print(f'wrote {counts["train"]} train and {counts["test"]} test feature vectors of {config.network.arch} '
          f'{config.network.extract_layer} to {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
