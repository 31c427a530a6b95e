"""Claiming a save folder: the write test and the lock never write through a link found there."""
import json
import os

import pytest

import results
from errors import InputError
from results import ResultsFolder
from utils import BackgroundFiles, UserError


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
