"""End to end under torchrun: feature extraction across processes.

Feature extraction across processes with torchrun, on the CPU (gloo): the same outputs as one process,
shares for every process, a failing process stops the group, an exchange that times out stops it too, each
failure said in one line, and a rerun extracts only what is missing."""
import json
import os
import re
import subprocess
import sys

import pytest

import distributed
from conftest import REPO, make_checkpoint, run


RESULTS = [f'{kind}_min_trained_0_max_trained_{seen}.{ext}' for seen in (2, 4, 6)
           for kind, ext in (('preds', 'pt'), ('accuracies', 'json'), ('slda_model_weights', 'pth'))] + \
          ['slda_model_weights_final.pth', 'imagenet_train_labels.npy', 'imagenet_val_labels.npy', 'stream_order.txt']


TOTAL_IMAGES = 17 + 10


def arguments(root, labels, ckpt, cache, save):
    return ['--dataset', 'imagenet', '--images_dir', str(root), '--labels_dir', str(labels), '--base_init_ckpt',
            str(ckpt), '--class_increment', '2', '--image_size', '32', '--num_workers', '0', '--batch_size', '4',
            '--feature_cache', str(cache), '--save_dir', str(save), '--no-plot', '--device', 'cpu']


def torchrun(argv, env=None, script='experiment.py'):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               os.path.join(REPO, script), *argv, '--no-progress']
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


# What torch.distributed.run itself prints when a process exits with a nonzero code, as it must for torchrun
# to fail: its log lines, and the traceback of its ChildFailedError with a table of the processes that failed
LAUNCHER_LOG = re.compile(r'^[IWE]\d{4} .*\n', re.M)


def process_output(stderr):
    """``stderr`` of torchrun without the launcher's own report: what the processes printed."""
    head, _, launcher_traceback = stderr.rpartition('Traceback (most recent call last):')
    if 'ChildFailedError' in launcher_traceback:
        stderr = head
    return LAUNCHER_LOG.sub('', stderr)


def assert_said_once(done, *fragments):
    """torchrun failed, its processes printed one line for it, with ``fragments``, and no traceback."""
    assert done.returncode != 0
    printed = process_output(done.stderr)
    lines = [line for line in printed.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in printed, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def summary(save):
    return json.loads((save / 'summary.json').read_text())


@pytest.fixture
def tree(tmp_path, image_folder):
    """The image folder, its label files and a base checkpoint."""
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    return root, labels, ckpt


@pytest.fixture
def single(tmp_path, tree):
    """A single-process run from an empty cache, to compare with."""
    root, labels, ckpt = tree
    assert run(arguments(root, labels, ckpt, tmp_path / 'single_cache', tmp_path / 'single'))[0] == 0
    return tree


def assert_same_outputs(a, b):
    for name in RESULTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_two_processes_give_the_outputs_of_one_each_extracting_a_share(tmp_path, single):
    root, labels, ckpt = single
    done = torchrun(arguments(root, labels, ckpt, tmp_path / 'cache', tmp_path / 'two'))
    assert done.returncode == 0, done.stderr
    assert_same_outputs(tmp_path / 'single', tmp_path / 'two')
    two = summary(tmp_path / 'two')
    assert two['processes'] == 2 and sum(two['images_extracted_per_process']) == TOTAL_IMAGES
    assert min(two['images_extracted_per_process']) > 0
    assert two['images_extracted_this_process'] == two['images_extracted_per_process'][0]
    seconds = two['seconds']     # the shared extraction is extraction, and its throughput that of every process
    assert 0 < seconds['extract_across_processes'] and seconds['prepare'] < seconds['total_this_process']
    assert two['images_per_second'] == pytest.approx(TOTAL_IMAGES / seconds['extract_across_processes'], rel=0.01)
    assert run(arguments(root, labels, ckpt, tmp_path / 'cache', tmp_path / 'rerun'))[0] == 0
    assert summary(tmp_path / 'rerun')['images_extracted_this_process'] == 0
    assert_same_outputs(tmp_path / 'single', tmp_path / 'rerun')


@pytest.mark.slow
def test_a_killed_process_stops_the_group_and_a_rerun_extracts_only_what_is_missing(tmp_path, single):
    root, labels, ckpt = single
    argv = arguments(root, labels, ckpt, tmp_path / 'cache', tmp_path / 'two')
    killed = torchrun(argv, env=dict(os.environ, SLDA_CRASH_AT='extract_batch:2', SLDA_CRASH_RANK='1'))
    assert killed.returncode != 0           # torchrun stops the other process and names the one that died
    assert re.search(r'Root Cause.*rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9 .*SIGKILL', killed.stderr, re.S), \
        killed.stderr
    assert not (tmp_path / 'two' / 'summary.json').exists()
    done = torchrun(argv + ['--resume'])
    assert done.returncode == 0, done.stderr
    assert 0 < sum(summary(tmp_path / 'two')['images_extracted_per_process']) < TOTAL_IMAGES
    assert_same_outputs(tmp_path / 'single', tmp_path / 'two')


@pytest.mark.slow
def test_a_process_that_fails_stops_the_group_naming_its_rank_and_the_cause(tmp_path, tree):
    root, labels, ckpt = tree
    bad = root / 'train' / 'n01000005' / 'n01000005_0002.JPEG'
    bad.write_bytes(b'not an image')
    done = torchrun(arguments(root, labels, ckpt, tmp_path / 'cache', tmp_path / 'two'))
    assert_said_once(done, 'failed while extracting features', '--skip_bad_images')
    assert re.search(rf'error: process [01] of 2 failed while extracting features: BadImageError: cannot read image '
                     rf'{re.escape(str(bad))}', done.stderr), done.stderr


@pytest.mark.slow
def test_an_exchange_that_times_out_gives_one_line_naming_dist_timeout(tmp_path, tree):
    """(That a rerun then extracts only what the cache lacks is the killed process's test.)"""
    root, labels, ckpt = tree
    argv = arguments(root, labels, ckpt, tmp_path / 'cache', tmp_path / 'two')
    slow = dict(os.environ, SLDA_SLOW_RANK='1', SLDA_SLOW_SECONDS='120')   # far longer than the timeout
    done = torchrun(argv + ['--dist_timeout', '2'], env=slow, script=os.path.join('tests', 'slow_rank.py'))
    assert_said_once(done, '--dist_timeout 2', 'rerun')
    assert re.search(rf'exitcode\s*: {distributed.CollectiveFailed.exit_code} ', done.stderr), done.stderr
