"""Export a finished run's final model as one self-contained module that loads without this project: the frozen
network with its pooling (and --random_projection where the run had one), then SLDA as a linear layer
(``StreamingLDA.to_linear``), mapping preprocessed images to class scores.

    python export_model.py streaming_experiments/slda_digits_plastic model.pt2

The module takes float32 images (B, 3, S, S) already resized, centre-cropped (or, with ``centre_crop`` false,
resized square) and normalised as the run's ``preprocessing`` says (``config.json``; also inside the file as ``preprocessing.json``) and returns scores
(B, C), in float32 throughout (a run with bfloat16 autocast scored features rounded to bfloat16, so its scores
differ from these by that rounding). ``torch.export`` writes it (``.pt2``; load with
``torch.export.load(path).module()``); where export fails, TorchScript (``.pt``; load with
``torch.jit.load(path)``):

    import json, torch
    extra = {'preprocessing.json': ''}
    model = torch.export.load('model.pt2', extra_files=extra).module()
    preprocessing = json.loads(extra['preprocessing.json'])
    scores = model(images)        # images normalised with preprocessing['mean'] and preprocessing['std']
"""
import argparse
import dataclasses
import json
import os
import sys
import warnings

import torch
from torch import nn

import data
from config import network_preprocessing
from datasets import DATASETS
from errors import InputError, ProjectError, error_line
from features import FeatureExtractor
from projection import RandomProjection
from slda_model import StreamingLDA
from utils import check_output_file


class ImageClassifier(nn.Module):
    """``features`` (images -> (B, d)) then ``linear`` ((B, d) -> (B, C))."""

    def __init__(self, features, linear):
        super().__init__()
        self.features, self.linear = features, linear

    def forward(self, images):
        return self.linear(self.features(images).float())


def load_run(folder):
    """(config.json's content, the final SLDA model) of a finished run in ``folder``; InputError naming the file
    when it is not one."""
    path = os.path.join(folder, 'config.json')
    if not os.path.isfile(path):
        raise InputError(f'{path} not found: give the save folder of a run')
    with open(path) as f:
        saved = json.load(f)
    if 'settings' not in saved:
        raise InputError(f'{path} was written by an earlier release (no settings); rerun it to export its model')
    if not os.path.isfile(os.path.join(folder, 'slda_model_weights_final.pth')):
        raise InputError(f'{folder} holds no slda_model_weights_final.pth: the run has not finished')
    output = saved['settings']['output']
    options = output['options']['slda']
    # the covariance's settings too: with a fixed one, OAS shrinks by the base initialisation's samples alone
    slda = StreamingLDA(output.get('random_projection') or saved['feature_dim'], len(saved['classes']),
                        shrinkage_param=options['shrinkage'], streaming_update_sigma=options['plastic_covariance'],
                        covariance_update=options.get('covariance_update', 'paper'),
                        device='cpu', dtype=getattr(torch, options['slda_dtype']),
                        mask_unseen_classes=options['mask_unseen_classes'])
    slda.load_model(folder, 'slda_model_weights_final')
    return saved, slda


def run_preprocessing(saved):
    """The data.Preprocessing of a run: config.json's ``preprocessing``, or, for runs written before it was
    recorded, what config.network_preprocessing gives for the run's settings."""
    if 'preprocessing' in saved:
        return data.Preprocessing(**{key: tuple(value) if isinstance(value, list) else value
                                     for key, value in saved['preprocessing'].items()})
    settings, network = saved['settings'], saved['settings']['network']
    return network_preprocessing(DATASETS[settings['data']['dataset']], settings['data']['options'].get('image_size'),
                                 network['arch'], network['weights'])


def build_classifier(saved, slda):
    """The run's network (float32, on the CPU) followed by ``slda.to_linear()``, and its data.Preprocessing."""
    network = saved['settings']['network']
    preprocessing = run_preprocessing(saved)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')      # a randomly initialised network was said so when the run started
        extractor = FeatureExtractor(network['arch'], network['extract_layer'], network['weights'],
                                     network['checkpoint'], 'cpu', False, preprocessing,
                                     saved['settings']['run']['seed'], network['allow_partial_checkpoint'],
                                     network.get('pooling', 'auto')).load()
    features = extractor.network
    output = saved['settings']['output']
    if output.get('random_projection'):
        features = nn.Sequential(features, RandomProjection(saved['feature_dim'], output['random_projection'],
                                                            output['projection_seed'] or 0))
    return ImageClassifier(features, slda.to_linear().float()).eval(), preprocessing


# What torch says on every export of the pinned release, about nothing the user can act on: torch.export.save
# of weights on the CPU, and TorchScript's deprecation (.pt is asked for by name, or the fallback where
# torch.export fails).
KNOWN_EXPORT_WARNINGS = ((UserWarning, r'No complete tensor found in the group!'),
                         (FutureWarning, r'`torch\.jit\.(trace|trace_method|save)` is deprecated'))


def export(folder, output):
    """Write the run in ``folder`` to ``output`` (.pt2: torch.export; .pt: TorchScript); returns the format used."""
    if os.path.splitext(output)[1] not in ('.pt2', '.pt'):
        raise InputError(f'{output}: the output must end in .pt2 (torch.export) or .pt (TorchScript)')
    check_output_file(output)
    saved, slda = load_run(folder)
    classifier, preprocessing = build_classifier(saved, slda)
    size = preprocessing.image_size
    example = data.normalize(torch.rand(2, 3, size, size), preprocessing.mean, preprocessing.std)
    extra = {'preprocessing.json': json.dumps(dataclasses.asdict(preprocessing)),
             'classes.json': json.dumps(saved['classes'])}
    with warnings.catch_warnings():
        for category, message in KNOWN_EXPORT_WARNINGS:
            warnings.filterwarnings('ignore', message, category)
        if output.endswith('.pt2'):
            try:
                program = torch.export.export(classifier, (example,), strict=False,
                                              dynamic_shapes={'images': {0: torch.export.Dim.DYNAMIC}})
            except Exception as e:          # torch.export refuses some networks' Python; TorchScript may not
                print(f'torch.export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                      f'writing TorchScript instead', file=sys.stderr)
                output = os.path.splitext(output)[0] + '.pt'
                check_output_file(output)
            else:
                torch.export.save(program, output, extra_files=extra)
                return 'torch.export'
        with torch.no_grad():
            traced = torch.jit.trace(classifier, example)
        torch.jit.save(traced, output, _extra_files=extra)
    return f'TorchScript ({output})'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run', help='the save folder of a finished run')
    parser.add_argument('output', help='the file to write: .pt2 (torch.export) or .pt (TorchScript)')
    args = parser.parse_args(argv)
    try:
        written = export(args.run, args.output)
    except ProjectError as e:
        print(error_line(e), file=sys.stderr)
        return e.exit_code
    print(f'wrote {args.output} with {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
