"""setup.sh refuses, in one line, an interpreter it cannot build the environment with."""
import shutil
import subprocess

import pytest

from conftest import REPO


@pytest.mark.parametrize('python,fragment', [
    ('nosuchpython', 'nosuchpython is no program that can be run'),
    ('{old}', 'Python 3.10.12 found; Python 3.11 or later is needed'),
])
def test_setup_refuses_a_missing_or_too_old_python_in_one_line(tmp_path, python, fragment):
    shutil.copy(f'{REPO}/setup.sh', tmp_path / 'setup.sh')
    old = tmp_path / 'python3.10'        # answers as a Python 3.10 would
    old.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.10.12"; exit 0; fi\nexit 1\n')
    old.chmod(0o755)
    done = subprocess.run(['bash', str(tmp_path / 'setup.sh')], capture_output=True, text=True, timeout=60,
                          env={'PATH': '/usr/bin:/bin', 'PYTHON': python.format(old=old)})
    assert done.returncode == 1
    assert done.stderr.count('\n') == 1 and fragment in done.stderr, done.stderr
    assert not (tmp_path / '.venv').exists()
