"""Write the features of a run's images to one file, for use outside this project (other output layers, notebooks).

    python export_features.py features.npz --dataset imagefolder --images_dir DIR --arch timm:vit_small_patch14_dinov2.lvd142m --feature_cache cache/

Takes experiment.py's options: with the same data, network and --feature_cache as a run, the features are read
from the cache that run filled (what is missing is extracted, and cached). The file (.npz, read with
``np.load(path)``, no pickles; or .pt, read with ``torch.load(path, weights_only=True)``) holds, for each split
(``train``, and ``test`` for the dataset's test split):

    {split}_features   (n, d) float32, in the run's stream plan's images, dataset order
    {split}_labels     (n,) int64, class indices into class_names
    {split}_paths      (n,) image paths relative to --images_dir (image indices for the digits)
    class_names        (C,)
    network            a JSON string: the network, layer, pooling, weights and preprocessing the features come from

Images skipped as unreadable (--skip_bad_images) have no row.
"""
import os
import sys

import numpy as np
import torch

import cli
from errors import ProjectError, error_line
from experiment import class_order, list_splits, make_plan
from features import build_readers
from options import SettingError
from utils import BackgroundFiles

FORMATS = ('.npz', '.pt')


def export(config, output):
    """Extract or read the features of ``config``'s run and write them to ``output`` (.npz or .pt); returns
    {split: number of images written}. Raises SettingError for another extension or a missing folder."""
    if config.output.random_projection:
        raise SettingError('random_projection', '--random_projection applies to the output layers; the features '
                                                'exported are the network\'s (project them with projection.py)')
    if os.path.splitext(output)[1] not in FORMATS:
        raise SettingError('output', f'{output}: the output file must end in {" or ".join(FORMATS)}')
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise SettingError('output', f'{output}: its folder does not exist')
    splits = list_splits(config)
    plan = make_plan(config, splits, class_order(config, splits)[0])
    files = BackgroundFiles()
    try:
        train, test, extractor, _ = build_readers(config, splits, plan, torch.device(config.run.device), files)
        arrays = {}
        for reader, key in ((train, 'train'), (test, 'test')):
            wanted = np.unique(np.concatenate([getattr(batch, f'{key}_indices') for batch in plan]))
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
    parser = cli.build_parser(__doc__)
    parser.add_argument('output', help='the file to write: .npz or .pt')
    given = vars(parser.parse_args(argv))
    output = given.pop('output')
    try:
        config = cli.make_config(**given)
        counts = export(config, output)
    except ProjectError as e:
        print(error_line(e), file=sys.stderr)
        return e.exit_code
    print(f'wrote {counts["train"]} train and {counts["test"]} test feature vectors of {config.network.arch} '
          f'{config.network.extract_layer} to {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
