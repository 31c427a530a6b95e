"""Runs that survive: resume after SIGKILL, determinism, safe loading, bad images, failing disks."""
import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import results
from conftest import REPO, make_checkpoint, run
from reference_runs import DIGITS_SHUFFLED, STORED, assert_matches, outputs, platform

DIGITS = [str(a) for a in DIGITS_SHUFFLED] + ['--device', 'cpu']      # as the stored reference was made
RESULT_FILES = [f'{kind}_min_trained_0_max_trained_{seen}.{ext}' for seen in (2, 4, 6)
                for kind, ext in (('preds', 'pt'), ('accuracies', 'json'), ('slda_model_weights', 'pth'))] + \
               ['slda_model_weights_final.pth', 'digits_train_labels.npy', 'digits_val_labels.npy']


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    save = tmp_path_factory.mktemp('uninterrupted') / 'out'
    assert run(DIGITS + ['--save_dir', save])[0] == 0
    return save


def assert_same_results(a, b):
    for name in RESULT_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    summary_a = json.loads((a / 'summary.json').read_text())
    summary_b = json.loads((b / 'summary.json').read_text())
    assert [(r['heads']['slda']['top1'], r['heads']['slda']['top5']) for r in summary_a['increments']] == \
           [(r['heads']['slda']['top1'], r['heads']['slda']['top5']) for r in summary_b['increments']]
    assert summary_b['finished']
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))


CRASH_POINTS = [
    'extract_batch:2',                                           # inside the first increment's extraction
    'increment_start:3',                                         # between the second and third increments
    'write/preds_min_trained_0_max_trained_4',                   # mid-write of an output
    'write/slda_model_weights_min_trained_0_max_trained_4',      # after accuracies, before the model file
]


def in_parallel(commands, env_of, cwd):
    """Run ``commands`` ({key: argv}) at once, each with environment ``env_of(key)``; {key: (exit code, stderr)}.
    Most of a short run is starting Python and importing torch, which overlaps well."""
    running = {key: subprocess.Popen(argv, env=env_of(key), cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for key, argv in commands.items()}
    return {key: (process.wait(timeout=300), process.stderr.read()) for key, process in running.items()}


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_results_and_the_stored_reference(tmp_path, uninterrupted):
    commands = {point: [sys.executable, os.path.join(REPO, 'experiment.py')] + DIGITS +
                ['--save_dir', str(tmp_path / f'out{i}'), '--no-progress', '--no-plot']
                for i, point in enumerate(CRASH_POINTS)}
    killed = in_parallel(commands, lambda point: dict(os.environ, SLDA_CRASH_AT=point), tmp_path)
    for i, (point, (code, stderr)) in enumerate(killed.items()):
        assert code == -signal.SIGKILL, (point, stderr)
        assert not (tmp_path / f'out{i}' / 'slda_model_weights_final.pth').exists(), point
    resumed = in_parallel({point: argv + ['--resume'] for point, argv in commands.items()},
                          lambda point: dict(os.environ), tmp_path)
    for i, (point, (code, stderr)) in enumerate(resumed.items()):
        assert code == 0, (point, stderr)
        assert_same_results(uninterrupted, tmp_path / f'out{i}')
        assert_matches(outputs(tmp_path / f'out{i}'), STORED['runs']['digits_shuffled'],
                       bitwise=platform() == STORED['platform'])


def test_resume_refuses_different_settings(tmp_path, capsys):
    save = tmp_path / 'out'
    assert run(['--num_classes', 4, '--save_dir', save], capsys)[0] == 0
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--shrinkage', 0.01, '--seed', 3], capsys)
    assert code == 2
    assert "--seed: saved 0, now 3" in out.err and "--shrinkage: saved 0.0001, now 0.01" in out.err
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--feature_cache', tmp_path / 'c'], capsys)
    assert code == 2 and '--feature_cache: saved False, now True' in out.err      # float16 features differ
    os.remove(save / 'slda_model_weights_final.pth')          # as if stopped before its end
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--num_workers', 0], capsys)
    assert code == 0, out.err
    os.remove(save / 'slda_model_weights_final.pth')
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--plot', '--dist_timeout', 60], capsys)
    assert code == 0, out.err                 # neither changes a result
    assert (save / 'learning_curve.png').exists()


def test_same_seed_is_bit_identical_on_cpu(tmp_path, uninterrupted):
    again = tmp_path / 'again'
    assert run(DIGITS + ['--save_dir', again])[0] == 0
    assert_same_results(uninterrupted, again)
    other_seed = tmp_path / 'other'
    assert run(DIGITS + ['--save_dir', other_seed, '--seed', 1])[0] == 0
    assert (other_seed / 'slda_model_weights_final.pth').read_bytes() != \
           (uninterrupted / 'slda_model_weights_final.pth').read_bytes()    # the shuffle order matters


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def folder_args(root, tmp_path, *extra):
    ckpt = tmp_path / 'base.pth'
    if not ckpt.exists():
        make_checkpoint(ckpt)
    return ['--dataset', 'imagefolder', '--images_dir', root, '--base_init_ckpt', ckpt, '--class_increment', 2,
            '--image_size', 32, '--batch_size', 4, '--num_workers', 2] + list(extra)


def test_truncated_jpeg_stops_the_run_naming_it(tmp_path, image_folder, capsys):
    root, _ = image_folder
    bad = root / 'train' / 'n01000004' / 'n01000004_0001.JPEG'
    truncate(bad)
    code, out = run(folder_args(root, tmp_path, '--save_dir', tmp_path / 'out'), capsys)
    assert code == 2 and f'cannot read image {bad}' in out.err and '--skip_bad_images' in out.err
    # the increments finished before the bad image are kept
    assert (tmp_path / 'out' / 'slda_model_weights_min_trained_0_max_trained_2.pth').exists()


def test_skip_bad_images_skips_counts_and_lists_them(tmp_path, image_folder, capsys):
    root, _ = image_folder
    bad_train = root / 'train' / 'n01000004' / 'n01000004_0001.JPEG'
    bad_val = root / 'val' / 'n01000001' / 'n01000001_0000.JPEG'
    truncate(bad_train)
    bad_val.write_bytes(b'')
    code, out = run(folder_args(root, tmp_path, '--save_dir', tmp_path / 'out', '--skip_bad_images'), capsys)
    assert code == 0, out.err
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert sorted(summary['skipped_images']) == sorted([str(bad_train), str(bad_val)])
    weights = torch.load(tmp_path / 'out' / 'slda_model_weights_final.pth', weights_only=True)
    assert weights['cK'][3] == 2                      # class n01000004 had 3 training images, one unreadable
    assert summary['increments'][-1]['test_images'] == 10 - 1


def test_checkpoint_that_runs_code_is_refused(tmp_path, image_folder, capsys):
    root, _ = image_folder
    marker = tmp_path / 'code_ran'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    torch.save({'state_dict': {'conv1.weight': Evil()}}, tmp_path / 'evil.pth')
    argv = folder_args(root, tmp_path, '--save_dir', tmp_path / 'out')
    argv[argv.index('--base_init_ckpt') + 1] = tmp_path / 'evil.pth'
    code, out = run(argv, capsys)
    assert code == 2 and 'refusing to load' in out.err and 'evil.pth' in out.err
    assert not marker.exists()


def test_non_finite_features_name_the_batch(tmp_path, image_folder, capsys):
    root, _ = image_folder
    ckpt = tmp_path / 'nan.pth'
    model = make_checkpoint(ckpt)
    state = model.state_dict()
    state['layer4.1.bn2.weight'][0] = float('nan')
    torch.save({'state_dict': state}, ckpt)
    argv = folder_args(root, tmp_path, '--save_dir', tmp_path / 'out')
    argv[argv.index('--base_init_ckpt') + 1] = ckpt
    code, out = run(argv, capsys)
    assert code == 2
    assert 'NaN or infinite features for the batch starting at image' in out.err
    assert str(root / 'train' / 'n01000001' / 'n01000001_0000.JPEG') in out.err


def test_unwritable_save_dir_fails_before_any_work(tmp_path, capsys):
    (tmp_path / 'a_file').write_text('x')
    code, out = run(['--save_dir', tmp_path / 'a_file' / 'out'], capsys)
    assert code == 2 and 'cannot write to --save_dir' in out.err


def test_full_disk_keeps_finished_increments(tmp_path, capsys, monkeypatch):
    calls = []
    real_save = results.save_tensor

    def failing_save(path, obj):     # the disk fills up while the second increment's probabilities are written
        if os.path.basename(path).startswith('preds_'):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, 'No space left on device', path)
        real_save(path, obj)

    monkeypatch.setattr(results, 'save_tensor', failing_save)
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 6, '--save_dir', save], capsys)
    assert code == 1
    assert 'No space left on device' in out.err and 'preds_min_trained_0_max_trained_4.pt' in out.err
    assert '--resume' in out.err
    first = torch.load(save / 'slda_model_weights_min_trained_0_max_trained_2.pth', weights_only=True)
    train_labels = np.load(save / 'digits_train_labels.npy')
    assert first['num_updates'] == (train_labels < 2).sum() == first['cK'].sum()
    assert not (save / 'slda_model_weights_min_trained_0_max_trained_4.pth').exists()   # writes stop at the failure
    assert not (save / 'slda_model_weights_min_trained_0_max_trained_6.pth').exists()
    assert not [name for name in os.listdir(save) if name.endswith('.tmp')]
    monkeypatch.setattr(results, 'save_tensor', real_save)
    code, out = run(['--num_classes', 6, '--save_dir', save, '--resume'], capsys)
    assert code == 0 and 'resuming after increment 1/3' in out.out, out.err


@pytest.mark.parametrize('argv,message', [
    (['--class_increment', 0], '(--class_increment) must be a whole number of at least 1, got 0'),
    (['--num_classes', 11], '--num_classes 11: the dataset has 10 classes'),
    (['--shrinkage', 2], '--shrinkage must be a number in [0, 1], got 2'),
])
def test_bad_protocol_arguments_fail_before_work(tmp_path, capsys, argv, message):
    code, out = run(argv + ['--save_dir', tmp_path / 'out'], capsys)
    assert code == 2 and message in out.err
    assert not (tmp_path / 'out').exists()


def test_skipped_images_are_reported_again_from_the_cache(tmp_path, image_folder, capsys):
    root, _ = image_folder
    bad = root / 'train' / 'n01000004' / 'n01000004_0001.JPEG'
    truncate(bad)
    cache = tmp_path / 'cache'
    argv = folder_args(root, tmp_path, '--feature_cache', cache)
    assert run(argv + ['--save_dir', tmp_path / 'first', '--skip_bad_images'], capsys)[0] == 0
    assert run(argv + ['--save_dir', tmp_path / 'second', '--skip_bad_images'], capsys)[0] == 0
    summary = json.loads((tmp_path / 'second' / 'summary.json').read_text())
    assert summary['images_extracted_this_process'] == 0 and summary['skipped_images'] == [str(bad)]
    code, out = run(argv + ['--save_dir', tmp_path / 'third'], capsys)
    assert code == 2 and f'cannot read image {bad}' in out.err


def test_background_writes_run_in_order_and_stop_at_the_first_failure(tmp_path):
    from utils import BackgroundFiles
    files = BackgroundFiles()
    done = []

    def write(name):
        if name == 'bad':
            raise OSError(errno.ENOSPC, 'No space left on device', name)
        done.append(name)

    try:
        assert files.read(lambda: 'read back').result() == 'read back'
        for name in ('a', 'b', 'bad', 'model'):
            files.write(write, name)
        files.wait()
        assert done == ['a', 'b']                     # nothing after the failed write, the model file included
        with pytest.raises(OSError, match='No space left'):
            files.write(write, 'later')
        with pytest.raises(OSError, match='No space left'):
            files.finish()
        assert done == ['a', 'b']
    finally:
        files.close()


def test_outputs_get_the_usual_permissions_not_mkstemps_private_ones(uninterrupted):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask            # 0644 under umask 022; mkstemp alone leaves 0600
    for name in RESULT_FILES + ['summary.json', 'config.json']:
        assert os.stat(uninterrupted / name).st_mode & 0o777 == expected, name
