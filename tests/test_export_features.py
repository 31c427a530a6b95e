"""export_features.py: a run's features, labels, class names and image paths in one file."""
import json
import os

import numpy as np
import pytest
import torch

import export_features
import features
from conftest import SYNSETS, assert_one_line_error, build_image_folder, run, unwritable_output


def test_exported_features_are_the_cached_ones_with_their_labels_and_paths(tmp_path, capsys, monkeypatch):
    root, _ = build_image_folder(tmp_path)
    flags = ['--dataset', 'imagefolder', '--images_dir', root, '--arch', 'timm:test_vit', '--weights', 'none',
             '--class_increment', 3, '--num_workers', 0, '--feature_cache', tmp_path / 'cache', '--no-progress']
    assert run(flags + ['--save_dir', tmp_path / 'out'])[0] == 0
    with monkeypatch.context() as patch:        # everything comes from the cache the run filled
        patch.setattr(features.Extraction, 'classes', lambda *args: pytest.fail('extracted again'))
        assert export_features.main([str(tmp_path / 'cached.npz')] + list(map(str, flags))) == 0
    assert 'wrote 17 train and 10 test feature vectors of timm:test_vit pre_logits' in capsys.readouterr().out
    # no cache: extracted now, in float32; no --class_increment: the folder's default (10) exceeds its 6 classes,
    # which the export need not refuse, since the increments change nothing in its file
    fresh = [str(a) for a in flags[:flags.index('--class_increment')] + ['--num_workers', 0, '--no-progress']]
    assert export_features.main([str(tmp_path / 'fresh.pt')] + fresh) == 0
    cached, extracted = np.load(tmp_path / 'cached.npz'), torch.load(tmp_path / 'fresh.pt', weights_only=True)
    for split, folder in (('train', 'train'), ('test', 'val')):
        paths = [os.path.join(folder, synset, name) for synset in SYNSETS
                 for name in sorted(os.listdir(root / folder / synset))]
        assert list(cached[f'{split}_paths']) == extracted[f'{split}_paths'] == paths
        expected_labels = [SYNSETS.index(path.split(os.sep)[1]) for path in paths]
        assert cached[f'{split}_labels'].tolist() == extracted[f'{split}_labels'].tolist() == expected_labels
        assert cached[f'{split}_features'].shape == (len(paths), 64)
        torch.testing.assert_close(torch.from_numpy(cached[f'{split}_features']), extracted[f'{split}_features'],
                                   rtol=2e-3, atol=2e-3)     # the cache keeps float16
    assert list(cached['class_names']) == SYNSETS
    assert json.loads(str(cached['network']))['arch'] == 'timm:test_vit'


def test_an_output_that_is_neither_npz_nor_pt_is_one_line(tmp_path, capsys):
    assert export_features.main([str(tmp_path / 'features.csv'), '--num_classes', '2', '--no-progress']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'features.csv' in err and '.npz or .pt' in err and len(err.splitlines()) == 1


@pytest.mark.parametrize('flags', [['--shrinkage', '0.5'], ['--heads', 'slda,ncm'], ['--save_dir', 'out'],
                                   ['--resume'], ['--save_preds', 'none'], ['--expt_name=name'], ['--no-plot'],
                                   ['--offline_accuracies', 'offline.json'], ['--random_projection', '8'],
                                   ['--no-streaming_update_sigma'], ['--dist_timeout', '5']])
def test_a_flag_that_changes_nothing_in_the_file_is_refused_naming_it_before_any_work(tmp_path, capsys, monkeypatch,
                                                                                      flags):
    monkeypatch.setattr(export_features, 'list_splits', lambda *args: pytest.fail('worked before refusing'))
    code = export_features.main([str(tmp_path / 'features.npz'), '--num_classes', '2', '--no-progress'] + flags)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f'error: {flags[0].split("=")[0]} does not apply to export_features.py')
    assert len(err.splitlines()) == 1 and not (tmp_path / 'features.npz').exists()


def test_the_refused_flags_are_left_out_of_help_and_the_others_kept(capsys):
    with pytest.raises(SystemExit):
        export_features.main(['--help'])
    text = capsys.readouterr().out.split('\noptions:')[1]       # the flags, after the description
    assert '--shrinkage' not in text and '--save_dir' not in text and 'output layers' not in text
    assert '--feature_cache' in text and '--class_increment' in text and '--arch' in text


@pytest.mark.parametrize('where', ['folder', 'unwritable'])
def test_an_output_that_cannot_be_written_is_one_line_naming_it_before_any_work(tmp_path, capsys, monkeypatch, where):
    output = unwritable_output(tmp_path, where, 'features.npz')
    monkeypatch.setattr(export_features, 'list_splits', lambda *args: pytest.fail('worked before checking'))
    code = export_features.main([str(output), '--num_classes', '2', '--no-progress'])
    assert_one_line_error(code, capsys.readouterr(), str(output))


@pytest.mark.filterwarnings('ignore:no checkpoint and no pretrained --weights')
def test_the_test_images_of_held_out_classes_are_exported_for_the_novelty_evaluation(tmp_path):
    # --ood_classes 3 streams the digits' classes 0-6 and scores 7-9's test images as novel: the export keeps them
    flags = ['--ood_classes', '3', '--arch', 'timm:test_vit', '--weights', 'none', '--no-progress']
    assert export_features.main([str(tmp_path / 'ood.npz')] + flags) == 0
    exported = np.load(tmp_path / 'ood.npz')
    assert sorted(set(exported['train_labels'].tolist())) == list(range(7))
    assert sorted(set(exported['test_labels'].tolist())) == list(range(10))
    assert len(exported['test_labels']) == 454 and len(exported['test_features']) == 454
