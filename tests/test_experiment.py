"""Tests of experiment.py, the driver: Experiment and main.

experiment.py, the driver: a run's outputs end to end (the digits default, Experiment from Python), the class
order it reports, interruption and resume, errors on the command line, and fit_and_evaluate's ranking."""
import glob
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import config
import experiment
from conftest import REPO, SYNSETS, assert_one_line_error, make_checkpoint, run, second_by_score_data, setting
from experiment import Experiment, fit_and_evaluate
from protocol import Batch
from slda_model import StreamingLDA
from utils import topk_accuracy

CLASSES = 20            # the classes of second_by_score_data


def increment_files(seen):
    name = f'min_trained_0_max_trained_{seen}'
    return {f'preds_{name}.pt', f'accuracies_{name}.json', f'slda_model_weights_{name}.pth'}


def test_digits_reduced_configuration(tmp_path, capsys):
    save = tmp_path / 'out'
    cache = tmp_path / 'cache'
    code, out = run(['--num_classes', 6, '--class_increment', 3, '--save_dir', save, '--feature_cache', cache],
                    capsys)
    assert code == 0, out.err
    expected = increment_files(3) | increment_files(6) | {
        'slda_model_weights_final.pth', 'config.json', 'summary.json', 'accuracy_matrix.csv', 'stream_order.txt',
        '.lock', 'digits_train_labels.npy', 'digits_val_labels.npy'}
    assert set(os.listdir(save)) == expected
    train_labels = np.load(save / 'digits_train_labels.npy')           # sorted class order: positions = labels
    expected_order = [f'{1 + label // 3}\t{index}' for index, label in enumerate(train_labels) if label < 6]
    assert (save / 'stream_order.txt').read_text().splitlines() == expected_order
    accuracies = json.loads((save / 'accuracies_min_trained_0_max_trained_6.json').read_text())
    assert set(accuracies) == {'seen_classes_top1', 'seen_classes_top5'}
    assert len(accuracies['seen_classes_top1']) == 2
    first = json.loads((save / 'accuracies_min_trained_0_max_trained_3.json').read_text())
    assert first['seen_classes_top1'] == accuracies['seen_classes_top1'][:1]
    probabilities = torch.load(save / 'preds_min_trained_0_max_trained_6.pt', weights_only=True)
    test_labels = np.load(save / 'digits_val_labels.npy')
    seen_labels = np.flatnonzero(test_labels < 6)              # sorted class order: positions = labels
    assert probabilities.shape == (len(seen_labels), 10)
    # the probabilities are the saved final model's, on the test features the run read from its cache
    test_features = torch.cat([torch.load(path, weights_only=True)['features'] for path in
                               sorted(glob.glob(str(cache / '*' / 'val' / 'class_*.pt')))])
    assert len(test_features) == len(seen_labels)
    final = StreamingLDA(512, 10, device='cpu')
    final.load_model(str(save), 'slda_model_weights_final')
    assert torch.equal(final.predict(test_features, return_probas=True), probabilities)
    scores = final.decision_function(test_features)        # top-k ranks scores: probabilities tie at 0
    top1, top5 = topk_accuracy(scores, test_labels[seen_labels])
    assert top1 == pytest.approx(100 * (scores.argmax(1).numpy() == test_labels[seen_labels]).mean())
    assert accuracies['seen_classes_top1'][-1] == top1 and accuracies['seen_classes_top5'][-1] == top5
    assert top1 > 90
    weights = torch.load(save / 'slda_model_weights_final.pth', weights_only=True)
    assert set(weights) == {'muK', 'cK', 'Sigma', 'num_updates'}
    assert weights['muK'].shape == (10, 512) and weights['Sigma'].shape == (512, 512)
    assert weights['cK'][6:].sum() == 0 and weights['num_updates'] == int(weights['cK'].sum())
    summary = json.loads((save / 'summary.json').read_text())
    assert summary['finished'] and [row['classes_seen'] for row in summary['increments']] == [3, 6]
    assert summary['final']['slda']['top1'] == top1 and summary['skipped_images'] == []
    config = json.loads((save / 'config.json').read_text())
    assert setting(config, 'classes_per_batch') == 3 and config['feature_dim'] == 512
    assert 'final top-1' in out.out


def test_digits_default_reaches_paper_like_accuracy(tmp_path, capsys):
    """The README's default run: plastic covariance, base init on 2 classes, 2 classes per increment."""
    code, out = run(['--save_dir', tmp_path / 'out'], capsys)
    assert code == 0, out.err
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert [row['classes_seen'] for row in summary['increments']] == [2, 4, 6, 8, 10]
    assert summary['final']['slda']['top1'] >= 93


def test_an_experiment_runs_from_python_without_a_command_line(tmp_path):
    built = config.make_config(num_classes=4, save_dir=str(tmp_path / 'out'), plot=False, progress=False)
    summary = Experiment(built, reporters=[]).run()
    assert summary['finished'] and [row['classes_seen'] for row in summary['increments']] == [2, 4]
    assert os.path.exists(tmp_path / 'out' / 'slda_model_weights_final.pth')


def test_imagenet_without_label_files_warns_before_any_work_and_records_it(tmp_path, image_folder, capsys):
    root, _ = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    code, out = run(['--images_dir', root, '--base_init_ckpt', ckpt, '--class_increment', 2, '--image_size', 32,
                     '--num_workers', 0, '--save_dir', tmp_path / 'out', '--batch_size', 1000], capsys)
    assert code == 0, out.err
    assert out.err.startswith('WARNING: no label files (imagenet_train_labels.npy, imagenet_val_labels.npy)')
    assert 'not comparable to the paper' in out.err
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['class_order_source'] == 'sorted' and config['class_order'] == list(range(len(SYNSETS)))
    assert config['class_order_warning'] in out.err


@pytest.mark.slow
def test_command_line_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'experiment.py'), '--dataset', 'imagefolder',
                             '--images_dir', str(tmp_path / 'missing'), '--save_dir', str(tmp_path / 'out')],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert f'--images_dir {tmp_path / "missing"} does not exist' in result.stderr


def test_more_than_one_process_needs_the_feature_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    code, out = run(['--num_classes', 4, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--feature_cache')


def interrupt_at(monkeypatch, nth):
    """Make the nth batch of the next run raise KeyboardInterrupt at its start, as Ctrl-C would."""
    seen = []

    def point(name):
        if name == 'increment_start':
            seen.append(name)
            if len(seen) == nth:
                raise KeyboardInterrupt
    monkeypatch.setattr(experiment, 'crash_point', point)


ALL_HEADS = ['--num_classes', 6, '--heads', 'slda,ncm,softmax_stream,offline']


def head_accuracies(save):
    rows = json.loads((save / 'summary.json').read_text())['increments']
    return [{name: (head['top1'], head['top5'], head['samples_seen']) for name, head in row['heads'].items()}
            for row in rows]


def test_an_interrupted_run_with_every_output_layer_resumes_to_the_uninterrupted_results(tmp_path, capsys,
                                                                                         monkeypatch):
    assert run(ALL_HEADS + ['--save_dir', tmp_path / 'whole'])[0] == 0
    interrupt_at(monkeypatch, 3)
    code, out = run(ALL_HEADS + ['--save_dir', tmp_path / 'stopped'], capsys)
    assert code == 130 and '2 finished batch(es) are saved, rerun with --resume' in out.err
    monkeypatch.undo()
    code, out = run(ALL_HEADS + ['--save_dir', tmp_path / 'stopped', '--resume'], capsys)
    assert code == 0 and 'resuming after increment 2/3' in out.out, out.err
    assert head_accuracies(tmp_path / 'stopped') == head_accuracies(tmp_path / 'whole')
    for name in ('heads_min_trained_0_max_trained_6.pth', 'slda_model_weights_final.pth'):
        assert (tmp_path / 'stopped' / name).read_bytes() == (tmp_path / 'whole' / name).read_bytes()


def test_an_interrupted_run_with_a_fixed_covariance_and_oas_resumes_to_the_uninterrupted_results(tmp_path, capsys,
                                                                                              monkeypatch):
    # The OAS shrinkage of a fixed covariance depends on the base initialisation's sample count, which the
    # checkpoint must carry: without it the resumed batches shrank by every sample seen.
    argv = ['--num_classes', 6, '--no-streaming_update_sigma', '--shrinkage', 'oas']
    assert run(argv + ['--save_dir', tmp_path / 'whole'])[0] == 0
    interrupt_at(monkeypatch, 3)
    assert run(argv + ['--save_dir', tmp_path / 'stopped'], capsys)[0] == 130
    monkeypatch.undo()
    assert run(argv + ['--save_dir', tmp_path / 'stopped', '--resume'], capsys)[0] == 0

    def shrinkage_and_accuracy(save):
        rows = json.loads((save / 'summary.json').read_text())['increments']
        return [(row['heads']['slda']['shrinkage'], row['heads']['slda']['top1']) for row in rows]
    assert shrinkage_and_accuracy(tmp_path / 'stopped') == shrinkage_and_accuracy(tmp_path / 'whole')
    name = 'slda_model_weights_final.pth'
    assert (tmp_path / 'stopped' / name).read_bytes() == (tmp_path / 'whole' / name).read_bytes()


def test_a_run_stopped_before_any_batch_finished_starts_again_with_the_same_command(tmp_path, capsys, monkeypatch):
    argv = ['--num_classes', 4, '--save_dir', tmp_path / 'out']
    interrupt_at(monkeypatch, 1)
    code, out = run(argv, capsys)
    assert code == 130 and '--resume' not in out.err           # nothing finished: nothing to continue
    monkeypatch.undo()
    code, out = run(argv, capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['finished']


def test_resuming_a_finished_run_leaves_it_as_it_is(tmp_path, capsys, monkeypatch):
    argv = ['--num_classes', 4, '--save_dir', tmp_path / 'out']
    assert run(argv)[0] == 0
    before = {path.name: path.read_bytes() for path in (tmp_path / 'out').iterdir()}
    code, out = run(argv + ['--resume'], capsys)
    assert code == 0 and 'holds a finished run; it is left as it is' in out.err
    assert {path.name: path.read_bytes() for path in (tmp_path / 'out').iterdir()} == before
    # it writes nothing, so it needs no free space for the probabilities it would write (a sweep script reruns it)
    for path in (tmp_path / 'out').glob('preds_*.pt'):
        path.unlink()
    fake_disk(monkeypatch, 1000)
    code, out = run(argv + ['--resume'], capsys)
    assert code == 0 and 'holds a finished run; it is left as it is' in out.err


def test_an_unexpected_error_keeps_its_traceback_and_is_logged_in_the_save_folder(tmp_path, monkeypatch):
    def broken(scores, labels):
        raise ValueError('a bug deep in a library')
    monkeypatch.setattr(experiment, 'topk_hits', broken)
    with pytest.raises(ValueError, match='a bug deep in a library'):
        run(['--num_classes', 4, '--save_dir', tmp_path / 'out'])
    log = (tmp_path / 'out' / 'error.log').read_text()
    assert 'Traceback' in log and 'a bug deep in a library' in log


class Reader:
    """The part of features.py's readers that fit_and_evaluate uses, over tensors in memory."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def take(self, indices):
        return self.X[indices], self.y[indices]

    def prefetch(self, indices):
        pass


def test_the_driver_ranks_by_scores_and_still_returns_the_probabilities():
    X, y, X_test, y_test = second_by_score_data()
    batch = Batch(1, np.arange(len(y)), np.arange(len(y_test)), CLASSES, 'min_trained_0_max_trained_20',
                  base_init=True)
    heads = {'slda': StreamingLDA(2, CLASSES, device='cpu')}
    row, probabilities = fit_and_evaluate(heads, batch, None, Reader(X, y), Reader(X_test, y_test),
                                          torch.device('cpu'), save_preds=True)
    assert (row['heads']['slda']['top1'], row['heads']['slda']['top5']) == (0.0, 100.0)
    assert torch.equal(probabilities, heads['slda'].predict_proba(X_test))
    _, probabilities = fit_and_evaluate(heads, batch, None, Reader(X, y), Reader(X_test, y_test),
                                        torch.device('cpu'), save_preds=False)
    assert probabilities is None



def fake_disk(monkeypatch, free):
    """Make experiment.py see ``free`` bytes free on every file system."""
    monkeypatch.setattr(experiment.shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(free, 0, free))


def test_preds_that_would_not_fit_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    fake_disk(monkeypatch, 1000)
    code, out = run(['--num_classes', 4, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--save_preds every', '--save_preds final', 'or none')
    assert not (tmp_path / 'out').exists()


def test_a_save_dir_where_nothing_can_be_written_is_named_as_such_not_blamed_on_save_preds(capsys):
    # /proc reports a file system of no size: no free space to compare the probabilities with
    code, out = run(['--num_classes', 4, '--save_dir', '/proc/slda_run'], capsys)
    assert_one_line_error(code, out, 'cannot write to --save_dir /proc/slda_run')


@pytest.mark.parametrize('save_preds,dtype,needed', [
    ('every', 'float32', (10 + 20 + 30) * 7 * 4),      # test images x classes x bytes per probability
    ('every', 'float64', (10 + 20 + 30) * 7 * 8),
    ('final', 'float32', 30 * 7 * 4),
    ('none', 'float32', 0),
])
def test_the_preds_estimate_counts_what_each_setting_writes(tmp_path, monkeypatch, save_preds, dtype, needed):
    plan = [Batch(i + 1, np.arange(3), np.arange(10 * (i + 1)), 2 * (i + 1), f'b{i}') for i in range(3)]
    settings = SimpleNamespace(run=SimpleNamespace(save_preds=save_preds, save_dir=str(tmp_path / 'out')),
                               slda=SimpleNamespace(slda_dtype=dtype), output=SimpleNamespace(random_projection=None))
    fake_disk(monkeypatch, needed)
    experiment.check_preds_space(settings, plan, num_classes=7)
    if needed:
        fake_disk(monkeypatch, needed - 1)
        with pytest.raises(ValueError, match=f'would write .* GB of probabilities \\(--save_preds {save_preds}\\)'):
            experiment.check_preds_space(settings, plan, num_classes=7)
    if save_preds == 'every':           # a resumed run's files already written are not counted again
        (tmp_path / 'out').mkdir()
        (tmp_path / 'out' / 'preds_b0.pt').touch()
        fake_disk(monkeypatch, needed * 5 // 6)
        experiment.check_preds_space(settings, plan, num_classes=7)


def test_the_model_files_of_a_random_projection_count_in_the_space_check(tmp_path, monkeypatch):
    plan = [Batch(i + 1, np.arange(3), np.arange(10), 2 * (i + 1), f'b{i}') for i in range(3)]
    settings = SimpleNamespace(run=SimpleNamespace(save_preds='none', save_dir=str(tmp_path / 'out')),
                               slda=SimpleNamespace(slda_dtype='float64'), output=SimpleNamespace(random_projection=100))
    # three batches' model files and the final one, each a 100 x 100 Sigma, 7 x 100 means and 7 counts in float64
    needed = 4 * (100 * 100 + 7 * 100 + 7) * 8
    fake_disk(monkeypatch, needed)
    experiment.check_preds_space(settings, plan, num_classes=7)
    fake_disk(monkeypatch, needed - 1)
    with pytest.raises(ValueError) as refused:
        experiment.check_preds_space(settings, plan, num_classes=7)
    # the model files alone do not fit: --save_preds, already none, is not the cause
    assert 'would write 0.00 GB of model files (--random_projection 100)' in str(refused.value)
    assert 'use a smaller --random_projection, or free some space' in str(refused.value)
    assert '--save_preds' not in str(refused.value)
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'slda_model_weights_b0.pth').touch()        # a resumed run's files are not counted again
    fake_disk(monkeypatch, needed * 3 // 4)
    experiment.check_preds_space(settings, plan, num_classes=7)


def test_softmax_in_place_gives_torch_softmax_bit_for_bit():
    scores = torch.randn(10, 7, generator=torch.Generator().manual_seed(0)) * 100
    expected = torch.softmax(scores, dim=1)
    assert experiment.softmax_in_place(scores, rows=3) is scores and torch.equal(scores, expected)
