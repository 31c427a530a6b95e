"""End to end: runs that survive a SIGKILL, and determinism.

End to end, runs that survive: a resume after SIGKILL at any point gives the uninterrupted run's files and the
stored reference, and the same seed gives the same files."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, run
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


# (A kill before the first increment finished starts afresh: test_experiment.py interrupts a run there.)
CRASH_POINTS = [
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


def test_same_seed_is_bit_identical_on_cpu(tmp_path, uninterrupted):
    again = tmp_path / 'again'
    assert run(DIGITS + ['--save_dir', again])[0] == 0
    assert_same_results(uninterrupted, again)
    other_seed = tmp_path / 'other'
    assert run(DIGITS + ['--save_dir', other_seed, '--seed', 1])[0] == 0
    assert (other_seed / 'slda_model_weights_final.pth').read_bytes() != \
           (uninterrupted / 'slda_model_weights_final.pth').read_bytes()    # the shuffle order matters
