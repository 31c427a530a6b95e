"""Tests of reporting.py: what a run says on the console and to its reporters.

What a run says on the console and to its reporters: images skipped with --skip_bad_images, and an iid
stream that is a single batch."""
import json

import config
import plot_results
from conftest import SMALL, TRAIN_PER_CLASS, build_image_folder, run
from experiment import Experiment
from reporting import Reporter


def warnings_of(err):
    return [line for line in err.splitlines() if line.startswith('WARNING: ')]


def test_skipped_images_are_counted_on_the_console_and_point_to_their_listing(tmp_path, capsys):
    root, _ = build_image_folder(tmp_path)
    bad = sorted((root / 'train').rglob('*.JPEG'))[:2]
    for path in bad:
        path.write_bytes(b'not an image')
    save = tmp_path / 'out'
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', save, '--skip_bad_images']
                    + SMALL, capsys)
    assert code == 0, out.err
    skipped = json.loads((save / 'summary.json').read_text())['skipped_images']
    assert sorted(skipped) == sorted(map(str, bad))
    lines = [line for line in warnings_of(out.err) if '--skip_bad_images' in line]
    assert len(lines) == 1, out.err
    assert f'{len(skipped)} unreadable images' in lines[0]
    assert str(save / 'summary.json') in lines[0] and 'skipped_images' in lines[0]


def test_a_run_without_skipped_images_says_nothing_of_them(tmp_path, capsys):
    root, _ = build_image_folder(tmp_path)
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', tmp_path / 'out',
                     '--skip_bad_images'] + SMALL, capsys)
    assert code == 0 and warnings_of(out.err) == [], out.err


class Recorder(Reporter):
    def __init__(self):
        self.warnings = []

    def warn(self, message):
        if message:
            self.warnings.append(message)


def test_an_iid_batch_of_every_training_image_is_one_batch_and_the_reporters_are_warned(tmp_path):
    root, _ = build_image_folder(tmp_path)
    images = sum(TRAIN_PER_CLASS)
    recorder = Recorder()
    summary = Experiment(config.make_config(
        dataset='imagefolder', images_dir=str(root), save_dir=str(tmp_path / 'out'), ordering='iid',
        images_per_batch=images, image_size=32, num_workers=0, plot=False, progress=False),
        reporters=[recorder]).run()
    assert len(summary['increments']) == 1
    warned = [message for message in recorder.warnings if '--images_per_batch' in message]
    assert len(warned) == 1 and f'--images_per_batch {images}' in warned[0] and f'{images} training images' in \
        warned[0], recorder.warnings


def test_the_one_batch_warning_is_on_the_console(tmp_path, capsys):
    root, _ = build_image_folder(tmp_path)
    images = sum(TRAIN_PER_CLASS)
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', tmp_path / 'out',
                     '--ordering', 'iid', '--images_per_batch', images + 1, '--image_size', 32, '--num_workers', 0],
                    capsys)
    assert code == 0, out.err
    assert [line for line in warnings_of(out.err) if f'--images_per_batch {images + 1}' in line], out.err


def test_an_output_layer_that_diverged_is_reported_as_such(tmp_path, capsys):
    code, out = run(['--num_classes', 4, '--heads', 'slda,softmax_stream,ncm', '--softmax_lr', '1e38',
                     '--save_dir', tmp_path / 'out'], capsys)
    assert code == 0, out.err
    rows = json.loads((tmp_path / 'out' / 'summary.json').read_text())['increments']
    assert [row['heads']['softmax_stream']['diverged'] for row in rows] == [True, True]
    assert not any(row['heads'][name]['diverged'] for row in rows for name in ('slda', 'ncm'))
    assert out.out.count('softmax_stream diverged (NaN or infinite scores)') == 2


def test_a_run_writes_its_learning_curve_unless_told_not_to_and_a_failing_plot_never_fails_it(
        tmp_path, capsys, monkeypatch):
    assert run(['--num_classes', 4, '--heads', 'slda,ncm,softmax_stream,offline', '--save_dir', tmp_path / 'drawn',
                '--plot'])[0] == 0
    assert (tmp_path / 'drawn' / 'learning_curve.png').exists()
    assert run(['--num_classes', 4, '--no-plot', '--save_dir', tmp_path / 'quiet'])[0] == 0
    assert not (tmp_path / 'quiet' / 'learning_curve.png').exists()

    def broken(runs, path):
        raise RuntimeError('no display')

    monkeypatch.setattr(plot_results, 'plot_runs', broken)
    code, out = run(['--num_classes', 4, '--save_dir', tmp_path / 'broken', '--plot'], capsys)
    assert code == 0 and 'learning_curve.png not written (RuntimeError: no display)' in out.err
    assert json.loads((tmp_path / 'broken' / 'summary.json').read_text())['finished']
