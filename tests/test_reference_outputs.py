"""End to end: the stored reference outputs.

The stored reference outputs (tests/reference_runs.py) are what experiment.py still writes: bit for bit on the
platform they were made on, to a tolerance elsewhere."""
import pytest

from reference_runs import RUNS, STORED, assert_matches, execute, outputs, platform, prepare


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp('reference_inputs'))


@pytest.mark.parametrize('name', list(RUNS))
def test_outputs_equal_the_stored_reference(tmp_path, inputs, name):
    save_dir = tmp_path / name
    execute(name, inputs, save_dir)
    assert_matches(outputs(save_dir), STORED['runs'][RUNS[name][1]], bitwise=platform() == STORED['platform'])
