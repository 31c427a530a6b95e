"""Tests of results.py: the save folder, what a run writes, and resume.

results.py: claiming a save folder (links, a folder in use, an unwritable one, existing results), what a run
writes (probabilities, Omega_all, covariance detail), a full disk, and resume: refused when the settings or the
inputs changed or the folder is of another release, continued otherwise, skipped images kept."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import experiment
import results
from conftest import REPO, SYNSETS, assert_one_line_error, make_checkpoint, run
from errors import InputError
from results import ResultsFolder
from utils import BackgroundFiles, UserError

SMALL = ['--class_increment', 2, '--image_size', 32, '--num_workers', 0]


@pytest.fixture
def folder(tmp_path):
    files = BackgroundFiles()
    folder = ResultsFolder(str(tmp_path / 'save'), files)
    yield folder
    folder.release()
    files.close()


@pytest.mark.parametrize('name', ['.lock', '.write_test'])
def test_a_link_in_the_save_folder_is_never_written_through(tmp_path, folder, name):
    target = tmp_path / 'precious.txt'
    target.write_text('keep me')
    os.makedirs(folder.path)
    os.symlink(target, os.path.join(folder.path, name))
    try:
        folder.claim({}, resume=False)
    except UserError as e:
        assert os.path.join(folder.path, name) in str(e) and 'link' in str(e)
    assert target.read_text() == 'keep me'


def test_a_link_named_lock_is_refused_naming_it(tmp_path, folder):
    os.makedirs(folder.path)
    os.symlink(tmp_path / 'elsewhere', os.path.join(folder.path, '.lock'))
    with pytest.raises(UserError, match=f'{os.path.join(folder.path, ".lock")} is a symbolic link'):
        folder.claim({}, resume=False)
    assert not os.path.exists(tmp_path / 'elsewhere')       # not created through the link either


def test_claim_leaves_only_its_lock(folder):
    assert folder.claim({}, resume=False) is False
    assert os.listdir(folder.path) == ['.lock']
    with open(os.path.join(folder.path, '.lock')) as f:
        assert f.read() == str(os.getpid())


@pytest.mark.parametrize('values', [[True, 0.5], [0.5, float('nan')], [0.5], [0.5, 1.5, 2], ['0.5', 0.5]])
def test_offline_accuracies_must_be_one_number_per_batch(tmp_path, values):
    path = tmp_path / 'offline.json'
    path.write_text(json.dumps({'top1': values, 'top5': [0.9, 0.9]}))
    with pytest.raises(InputError, match='"top1" must list 2 accuracies'):
        results.read_offline_accuracies(str(path), 2)


def test_offline_accuracies_in_fractions_or_percent_come_back_in_percent(tmp_path):
    path = tmp_path / 'offline.json'
    for scale in (1, 100):
        path.write_text(json.dumps({'top1': [0.5 * scale, 0.25 * scale], 'top5': [1.0 * scale, 0.75 * scale]}))
        assert results.read_offline_accuracies(str(path), 2) == {'top1': [50.0, 25.0], 'top5': [100.0, 75.0]}


def test_offline_accuracies_mixing_fractions_and_percent_are_refused(tmp_path):
    path = tmp_path / 'offline.json'
    path.write_text(json.dumps({'top1': [0.5, 0.25], 'top5': [0.9, 90.0]}))
    with pytest.raises(InputError, match='mixes fractions and percentages \\(0.25 beside 90\\)'):
        results.read_offline_accuracies(str(path), 2)


def test_unwritable_save_dir_fails_before_any_work(tmp_path, capsys):
    (tmp_path / 'a_file').write_text('x')
    code, out = run(['--save_dir', tmp_path / 'a_file' / 'out'], capsys)
    assert code == 2 and 'cannot write to --save_dir' in out.err


def test_existing_results_are_not_overwritten_without_resume(tmp_path, capsys):
    save = tmp_path / 'out'
    argv = ['--num_classes', 4, '--save_dir', save]
    assert run(argv, capsys)[0] == 0
    before = (save / 'slda_model_weights_final.pth').read_bytes()
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, str(save), 'finished run', '--save_dir')
    assert (save / 'slda_model_weights_final.pth').read_bytes() == before


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    save = tmp_path / 'out'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from results import ResultsFolder; '
         'from utils import BackgroundFiles; folder = ResultsFolder(sys.argv[1], BackgroundFiles()); '
         'folder.claim({}, resume=False); '
         'print("claimed", flush=True); time.sleep(120)', str(save)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'claimed'
        for extra in ([], ['--resume']):
            code, out = run(['--num_classes', 4, '--save_dir', save] + extra, capsys)
            assert code == 2 and f'{save} is in use by another run (process {holder.pid})' in out.err
        assert not (save / 'config.json').exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, out = run(['--num_classes', 4, '--save_dir', save], capsys)      # a killed holder leaves no stale lock
    assert code == 0, out.err


@pytest.mark.parametrize('save_preds,expected', [('final', {6}), ('none', set())])
def test_save_preds_and_float64_state(tmp_path, capsys, save_preds, expected):
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 6, '--save_preds', save_preds, '--slda_dtype', 'float64', '--save_dir', save],
                    capsys)
    assert code == 0, out.err
    preds = {int(name.split('_')[-1][:-3]) for name in os.listdir(save) if name.startswith('preds_')}
    assert preds == expected
    assert torch.load(save / 'slda_model_weights_final.pth', weights_only=True)['Sigma'].dtype == torch.float64


@pytest.mark.parametrize('unit,scale', [('fractions', 1), ('percent', 100)])
def test_omega_all_from_offline_accuracies(tmp_path, capsys, unit, scale):
    offline = tmp_path / 'offline.json'
    offline.write_text(json.dumps({'top1': [1.0 * scale, 0.8 * scale], 'top5': [1.0 * scale, 0.5 * scale]}))
    code, out = run(['--num_classes', 4, '--offline_accuracies', offline, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 0, out.err
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    rows = [row['heads']['slda'] for row in summary['increments']]      # our accuracies, in percent
    assert summary['accuracy_unit'] == 'percent' and rows[-1]['top1'] > 90
    assert summary['omega_all']['top1'] == pytest.approx((rows[0]['top1'] / 100 + rows[1]['top1'] / 80) / 2)
    assert summary['omega_all']['top5'] == pytest.approx((rows[0]['top5'] / 100 + rows[1]['top5'] / 50) / 2)
    offline.write_text(json.dumps({'top1': [1.0 * scale], 'top5': [1.0 * scale]}))
    code, out = run(['--num_classes', 4, '--offline_accuracies', offline, '--save_dir', tmp_path / 'bad'], capsys)
    assert code == 2 and '"top1" must list 2 accuracies' in out.err and 'percentages in (0, 100]' in out.err


@pytest.mark.parametrize('flags, covariance, detail', [
    (['--no_base_init', '--no-streaming_update_sigma'], 'fixed',
     'fixed (identity: no base initialisation, so nearest class mean)'),
    (['--no-streaming_update_sigma'], 'fixed', "fixed (the base initialisation's estimate, kept)"),
    (['--no_base_init', '--streaming_update_sigma'], 'plastic', 'plastic (updated by every sample)'),
])
def test_the_run_says_what_its_covariance_is(tmp_path, capsys, flags, covariance, detail):
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 6, '--heads', 'slda,ncm', '--save_dir', save] + flags, capsys)
    assert code == 0, out.err
    config = json.loads((save / 'config.json').read_text())
    assert (config['covariance'], config['covariance_detail']) == (covariance, detail)
    assert f'covariance: {detail};' in out.out
    rows = json.loads((save / 'summary.json').read_text())['increments']
    same = [(row['heads']['slda']['top1'], row['heads']['slda']['top5']) ==
            (row['heads']['ncm']['top1'], row['heads']['ncm']['top5']) for row in rows]
    # the identity covariance makes SLDA's scores -||x - mu_k||^2 / 2 plus a term common to every class
    assert all(same) if 'nearest class mean' in detail else not all(same)


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
    assert '; 1 finished batch(es) are saved, rerun with --resume' in out.err     # the files on disk, not those queued
    first = torch.load(save / 'slda_model_weights_min_trained_0_max_trained_2.pth', weights_only=True)
    train_labels = np.load(save / 'digits_train_labels.npy')
    assert first['num_updates'] == (train_labels < 2).sum() == first['cK'].sum()
    assert not (save / 'slda_model_weights_min_trained_0_max_trained_4.pth').exists()   # writes stop at the failure
    assert not (save / 'slda_model_weights_min_trained_0_max_trained_6.pth').exists()
    assert not [name for name in os.listdir(save) if name.endswith('.tmp')]
    monkeypatch.setattr(results, 'save_tensor', real_save)
    code, out = run(['--num_classes', 6, '--save_dir', save, '--resume'], capsys)
    assert code == 0 and 'resuming after increment 1/3' in out.out, out.err


def test_the_stop_message_counts_the_batches_whose_files_were_written_not_those_queued(tmp_path, capsys,
                                                                                        monkeypatch):
    real_save = results.save_tensor

    def failing_save(path, obj):     # the second batch's model file does not fit on the disk
        if os.path.basename(path) == 'slda_model_weights_min_trained_0_max_trained_4.pth':
            raise OSError(errno.ENOSPC, 'No space left on device', path)
        real_save(path, obj)

    monkeypatch.setattr(results, 'save_tensor', failing_save)
    code, out = run(['--num_classes', 8, '--save_preds', 'none', '--save_dir', tmp_path / 'out'], capsys)
    assert code == 1 and 'No space left on device' in out.err
    assert '; 1 finished batch(es) are saved' in out.err, out.err
    assert len(results.ResultsFolder(str(tmp_path / 'out'), None).finished_batches()) == 1


def test_the_stop_message_is_one_line_when_the_save_folder_is_gone(tmp_path, capsys, monkeypatch):
    real_record = results.ResultsFolder.record

    def record_then_vanish(self, *args):       # the folder is removed (or unmounted) after the first batch
        real_record(self, *args)
        self.files.finish()
        shutil.rmtree(self.path)

    monkeypatch.setattr(results.ResultsFolder, 'record', record_then_vanish)
    code, out = run(['--num_classes', 6, '--save_dir', tmp_path / 'gone'], capsys)
    assert_one_line_error(code, out, 'No such file or directory', exit_code=1)
    assert 'finished batch(es) are saved' not in out.err


def test_resume_refuses_different_settings(tmp_path, capsys):
    save = tmp_path / 'out'
    assert run(['--num_classes', 4, '--save_dir', save], capsys)[0] == 0
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--shrinkage', 0.01, '--seed', 3], capsys)
    assert code == 2
    assert "--seed: saved 0, now 3" in out.err and "--shrinkage: saved 0.0001, now 0.01" in out.err
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--feature_cache', tmp_path / 'c'], capsys)
    assert code == 2 and ('--feature_cache: the run extracted its features without a cache; leave --feature_cache '
                          'out' in out.err)      # float16 features differ
    os.remove(save / 'slda_model_weights_final.pth')          # as if stopped before its end
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--num_workers', 0], capsys)
    assert code == 0, out.err
    os.remove(save / 'slda_model_weights_final.pth')
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume', '--plot', '--dist_timeout', 60], capsys)
    assert code == 0, out.err                 # neither changes a result
    assert (save / 'learning_curve.png').exists()


@pytest.mark.parametrize('layout', ['run_arguments_layout', 'run_fraction_layout'])
def test_resume_into_a_folder_of_an_earlier_release_is_refused_in_one_line(tmp_path, capsys, layout):
    save = tmp_path / 'old'
    shutil.copytree(os.path.join(REPO, 'tests', 'fixtures', layout), save)
    (save / 'slda_model_weights_min_trained_0_max_trained_2.pth').write_bytes(b'')   # a batch it finished
    before = (save / 'config.json').read_bytes()
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume'], capsys)
    assert code == 2 and out.err.count('\n') == 1 and 'written by another release' in out.err
    assert (save / 'config.json').read_bytes() == before


def tree_args(root, labels, ckpt, save):
    """The tree as ImageNet with its label files, or as an image folder in sorted class order without them."""
    order = ['--dataset', 'imagenet', '--labels_dir', labels] if labels else ['--dataset', 'imagefolder']
    return order + ['--images_dir', root, '--base_init_ckpt', ckpt, '--streaming_update_sigma', '--save_dir',
                    save] + SMALL


def finish_two_of_three(root, labels, ckpt, save, capsys):
    """A run of the tree that stopped after its second increment (its last increment's files removed)."""
    code, out = run(tree_args(root, labels, ckpt, save), capsys)
    assert code == 0, out.err
    for name in ('slda_model_weights_final.pth', 'slda_model_weights_min_trained_0_max_trained_6.pth'):
        os.remove(save / name)


@pytest.mark.parametrize('change,fragments', [
    ('label files', ['class order']),
    ('checkpoint', ['network']),
    ('training images', ["the training stream differs from the saved run (stream_order.txt line 4: saved "     # the
                         "'1\\ttrain/n01000002/n01000002_0000.JPEG', now '1\\ttrain/n01000002/n01000002_0001.JPEG')"]),
    ('test images', ['test images']),                                              # wording of a refusal, once
])
def test_resume_refuses_when_what_the_arguments_point_at_changed(tmp_path, image_folder, capsys, change, fragments):
    root, labels = image_folder
    if change in ('training images', 'test images'):
        labels = None                      # label files would no longer fit the images: another, clear error
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    save = tmp_path / 'out'
    finish_two_of_three(root, labels, ckpt, save, capsys)
    config_before = (save / 'config.json').read_text()
    if change == 'label files':
        for split in ('train', 'val'):
            values = np.load(labels / f'imagenet_{split}_labels.npy')
            np.save(labels / f'imagenet_{split}_labels.npy', np.where(values < 2, 1 - values, values))
    elif change == 'checkpoint':
        make_checkpoint(ckpt, seed=4)
    elif change == 'training images':
        os.remove(root / 'train' / SYNSETS[1] / f'{SYNSETS[1]}_0000.JPEG')
    else:
        os.remove(root / 'val' / SYNSETS[0] / f'{SYNSETS[0]}_0000.JPEG')
    code, out = run(tree_args(root, labels, ckpt, save) + ['--resume'], capsys)
    assert_one_line_error(code, out, *fragments)
    assert (save / 'config.json').read_text() == config_before
    assert not (save / 'slda_model_weights_final.pth').exists()


def test_resume_with_unchanged_inputs_continues(tmp_path, image_folder, capsys):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    finish_two_of_three(root, labels, ckpt, tmp_path / 'out', capsys)
    code, out = run(tree_args(root, labels, ckpt, tmp_path / 'out') + ['--resume'], capsys)
    assert code == 0 and 'resuming after increment 2/3' in out.out


def test_skipped_images_survive_a_resume(tmp_path, image_folder, capsys, monkeypatch):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    bad = root / 'train' / SYNSETS[1] / f'{SYNSETS[1]}_0001.JPEG'      # stream class 0: the first increment
    bad.write_bytes(bad.read_bytes()[:100])
    argv = tree_args(root, labels, ckpt, tmp_path / 'interrupted') + ['--skip_bad_images']

    def interrupt_before_the_second_increment(name):
        if name == 'increment_start' and (tmp_path / 'interrupted' / 'config.json').exists():
            interrupt_before_the_second_increment.hits += 1
            if interrupt_before_the_second_increment.hits == 2:
                raise KeyboardInterrupt

    interrupt_before_the_second_increment.hits = 0
    monkeypatch.setattr(experiment, 'crash_point', interrupt_before_the_second_increment)
    code, out = run(argv, capsys)
    assert code == 130 and 'rerun with --resume' in out.err
    assert (tmp_path / 'interrupted' / 'slda_model_weights_min_trained_0_max_trained_2.pth').exists()
    code, out = run(argv + ['--resume'], capsys)
    assert code == 0 and 'resuming after increment 1/3' in out.out
    code, _ = run(tree_args(root, labels, ckpt, tmp_path / 'whole') + ['--skip_bad_images'])
    assert code == 0
    summaries = [json.loads((tmp_path / name / 'summary.json').read_text()) for name in ('interrupted', 'whole')]
    assert summaries[0]['skipped_images'] == summaries[1]['skipped_images'] == [str(bad)]


def test_a_start_that_fails_before_any_output_leaves_no_folder_behind(tmp_path, capsys):
    save = tmp_path / 'out'
    unrelated = tmp_path / 'unrelated.pth'          # refused when the network loads, after the folder is claimed
    torch.save({'not_a_layer.weight': torch.zeros(3)}, unrelated)
    argv = ['--num_classes', 4, '--base_init_ckpt', unrelated, '--save_dir', save]
    code, out = run(argv, capsys)
    assert code == 2 and 'no tensor of' in out.err
    assert not save.exists()
    save.mkdir()                          # a folder the user made is theirs: it stays, empty
    assert run(argv)[0] == 2
    assert save.is_dir() and os.listdir(save) == ['.lock']


def test_an_unfinished_run_is_not_overwritten_and_resume_is_suggested(tmp_path, capsys):
    save = tmp_path / 'out'
    assert run(['--num_classes', 4, '--save_dir', save])[0] == 0
    os.remove(save / 'slda_model_weights_final.pth')          # as if stopped after its first batches
    code, out = run(['--num_classes', 4, '--save_dir', save], capsys)
    assert_one_line_error(code, out, str(save), 'unfinished run', 'pass --resume')
