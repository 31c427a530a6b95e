"""Stored reference outputs: what experiment.py wrote for a set of small commands, kept so that a change of the
driver that should not change results is checked against them.

Each reference run is a command line; its outputs (probabilities, accuracies, models, label files) are reduced
to value hashes (sha256 of each tensor's bytes, with dtype and shape) and to numeric summaries. On the platform
the references were made on (torch version and CPU instruction set) a run must match the hashes bit for bit;
elsewhere network and BLAS kernels differ, so the summaries are compared with a tolerance.

Regenerate only on purpose, when a change is meant to change results, and say so in the commit:

    .venv/bin/python tests/reference_runs.py
"""
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from pytest import approx

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]
from conftest import build_image_folder, make_checkpoint, run  # noqa: E402

REFERENCE_FILE = TESTS / 'reference' / 'outputs.json'
STORED = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else None
DIGITS_SHUFFLED = ['--num_classes', 6, '--class_increment', 2, '--shuffle_data']
TREE = ['--dataset', 'imagenet', '--images_dir', '{images}', '--labels_dir', '{labels}', '--base_init_ckpt',
        '{checkpoint}', '--class_increment', 2, '--image_size', 32, '--batch_size', 4, '--num_workers', 0]
# name: (arguments, the reference it must equal). A run named ..._rerun must give the outputs of another run.
# test_robustness.py kills runs of digits_shuffled at several points, resumes them and compares them with it.
RUNS = {
    'digits_default': ([], 'digits_default'),
    'digits_shuffled': (DIGITS_SHUFFLED, 'digits_shuffled'),
    'tree_plastic': (TREE + ['--streaming_update_sigma'], 'tree_plastic'),
    'tree_fixed': (TREE + ['--no-streaming_update_sigma'], 'tree_fixed'),
    'tree_plastic_cached': (TREE + ['--streaming_update_sigma', '--feature_cache', '{cache}'], 'tree_plastic_cached'),
    'tree_plastic_cached_rerun': (TREE + ['--streaming_update_sigma', '--feature_cache', '{cache}'],
                                  'tree_plastic_cached'),
    'tree_fixed_cached_shuffled': (TREE + ['--feature_cache', '{cache}', '--no-streaming_update_sigma',
                                           '--shuffle_data'], 'tree_fixed_cached_shuffled'),
}


def platform():
    from features import cpu_supports_bfloat16
    return {'torch': torch.__version__, 'cpu_capability': torch.backends.cpu.get_cpu_capability(),
            'bfloat16': cpu_supports_bfloat16()}


def prepare(directory):
    """The inputs every reference run may name, made in ``directory``; returns the placeholders' values."""
    images, labels = build_image_folder(directory)
    make_checkpoint(directory / 'base.pth')
    return {'images': images, 'labels': labels, 'checkpoint': directory / 'base.pth', 'cache': directory / 'cache'}


def command(name, inputs, save_dir):
    """Run ``name``'s command line; on the CPU, where the references were made, even on a machine with a GPU."""
    arguments, _ = RUNS[name]
    return [str(a).format(**{k: str(v) for k, v in inputs.items()}) for a in arguments] + \
        ['--save_dir', str(save_dir), '--device', 'cpu']


def execute(name, inputs, save_dir):
    """Run reference run ``name`` into ``save_dir``."""
    code, _ = run(command(name, inputs, save_dir))
    assert code == 0, f'{name} failed'


def tensors_of(path):
    """The tensors of an output file, by name within the file."""
    if path.suffix == '.npy':
        return {'': torch.from_numpy(np.load(path))}
    if path.suffix == '.json':
        return {key: torch.tensor(values, dtype=torch.float64) for key, values in json.loads(path.read_text()).items()}
    loaded = torch.load(path, weights_only=True)
    if torch.is_tensor(loaded):
        return {'': loaded}
    return {key: torch.as_tensor(value) for key, value in loaded.items()}


def describe(tensor):
    values = tensor.double()
    return {'dtype': str(tensor.dtype), 'shape': list(tensor.shape),
            'sha256': hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest(),
            'sum': values.sum().item(), 'abs_sum': values.abs().sum().item(),
            'argmax': values.reshape(len(values), -1).argmax(1).tolist() if values.dim() == 2 else None}


def outputs(save_dir):
    """{file: {tensor name: description}} of every result file in ``save_dir`` (not config or summary, which
    hold times and paths), plus the accuracies summary.json reports."""
    described = {}
    for path in sorted(Path(save_dir).iterdir()):
        if path.suffix in ('.pt', '.pth', '.npy') or path.name.startswith('accuracies_'):
            described[path.name] = {key: describe(t) for key, t in tensors_of(path).items()}
    summary = json.loads((Path(save_dir) / 'summary.json').read_text())
    described['summary.json'] = {'accuracies': [[row['heads']['slda']['top1'], row['heads']['slda']['top5']]
                                              for row in summary['increments']],
                                 'train_images': [row['train_images'] for row in summary['increments']],
                                 'test_images': [row['test_images'] for row in summary['increments']]}
    return described


def assert_matches(got, expected, bitwise):
    """``got`` (from ``outputs``) equals a stored reference: bit for bit, or to a tolerance elsewhere."""
    assert sorted(got) == sorted(expected)
    assert got['summary.json'] == expected['summary.json'] if bitwise else \
        got['summary.json']['train_images'] == expected['summary.json']['train_images']
    for file_name, tensors in expected.items():
        if file_name == 'summary.json':
            continue
        assert sorted(got[file_name]) == sorted(tensors), file_name
        for key, want in tensors.items():
            have = got[file_name][key]
            assert (have['dtype'], have['shape']) == (want['dtype'], want['shape']), (file_name, key)
            if bitwise:
                assert have['sha256'] == want['sha256'], (file_name, key)
            else:
                for stat in ('sum', 'abs_sum'):
                    assert have[stat] == approx(want[stat], rel=1e-3, abs=1e-3), (file_name, key, stat)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        inputs = prepare(Path(tmp))
        references = {}
        for name in RUNS:
            save_dir = Path(tmp) / name
            execute(name, inputs, save_dir)
            references[name] = outputs(save_dir)
            reference = RUNS[name][1]
            if reference != name:
                assert references[name] == references[reference], f'{name} differs from {reference}'
    REFERENCE_FILE.parent.mkdir(exist_ok=True)
    REFERENCE_FILE.write_text(json.dumps({'platform': platform(), 'runs': {name: references[name] for name in RUNS
                                                                            if RUNS[name][1] == name}}, indent=1))
    print(f'wrote {REFERENCE_FILE}')


if __name__ == '__main__':
    main()
