"""slda_benchmark.sh on a CIFAR-10-shaped folder: the runs it starts, its table, a rerun with other extra flags and
a mistyped covariance."""
import json
import os
import subprocess
import sys

import pytest

from cifar_folder import build_cifar10
from conftest import REPO, setting

SCRIPT = os.path.join(REPO, 'slda_benchmark.sh')


@pytest.mark.slow
def test_a_run_is_tabulated_and_a_rerun_with_other_extra_flags_refused_leaving_it_as_it_is(tmp_path):
    cifar, _ = build_cifar10(tmp_path)
    env = dict(os.environ, BENCHMARKS='cifar10_b0_inc2', CIFAR10_DIR=str(cifar), BACKBONES='resnet18@none',
               COVARIANCES='fixed', SAVE_ROOT=str(tmp_path / 'results'), PYTHON=sys.executable)
    command = ['bash', SCRIPT, '--image_size', '32', '--num_workers', '0', '--no-progress', '--no-plot']
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / 'results' / 'cifar10_b0_inc2_resnet18_none_seed1993_fixed'
    config = json.loads((folder / 'config.json').read_text())
    assert (config['dataset'], config['covariance'], setting(config, 'class_order_seed')) == ('cifar10', 'fixed', 1993)
    table = (tmp_path / 'results' / 'table_cifar10_b0_inc2.md').read_text()
    assert table in done.stdout and '| cifar10 | class_incremental | fixed | 1 |' in table
    # the folder's name leaves extra flags out: the run it holds is not taken for one of --shrinkage 0.5
    finished = (folder / 'summary.json').read_bytes()
    other = subprocess.run(command + ['--shrinkage', '0.5'], env=env, capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and 'cannot --resume' in other.stderr and '--shrinkage' in other.stderr
    assert 'table saved' not in other.stdout and (folder / 'summary.json').read_bytes() == finished


def test_an_unknown_covariance_is_refused_before_any_run(tmp_path):
    env = dict(os.environ, BENCHMARKS='cifar10_b0_inc2', CIFAR10_DIR=str(tmp_path), COVARIANCES='plastic plastc',
               SAVE_ROOT=str(tmp_path / 'results'), PYTHON='false')      # no run may start
    done = subprocess.run(['bash', SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == \
        "error: COVARIANCES: unknown covariance 'plastc' (accepted: plastic, fixed)\n"
    assert not (tmp_path / 'results').exists()
