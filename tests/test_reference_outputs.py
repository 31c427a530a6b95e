"""The stored reference outputs (tests/reference_runs.py) are what experiment.py still writes: bit for bit on the
platform they were made on, to a tolerance elsewhere."""
import json

import pytest

from reference_runs import REFERENCE_FILE, RUNS, execute, outputs, platform, prepare

STORED = json.loads(REFERENCE_FILE.read_text())


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp('reference_inputs'))


def assert_matches(got, expected, bitwise):
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
                    assert have[stat] == pytest.approx(want[stat], rel=1e-3, abs=1e-3), (file_name, key, stat)


@pytest.mark.parametrize('name', list(RUNS))
def test_outputs_equal_the_stored_reference(tmp_path, inputs, name):
    save_dir = tmp_path / name
    execute(name, inputs, save_dir)
    assert_matches(outputs(save_dir), STORED['runs'][RUNS[name][1]], bitwise=platform() == STORED['platform'])
