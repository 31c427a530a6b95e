"""For tests only: experiment.py with the torchrun process of rank SLDA_SLOW_RANK sleeping SLDA_SLOW_SECONDS
before each batch it extracts, so that the others' exchanges time out (tests/test_torchrun.py). A wrapper,
so that the program itself carries no such switch."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import experiment  # noqa: E402
import features  # noqa: E402

crash_point = features.crash_point


def slow_crash_point(name):
    if name == 'extract_batch' and os.environ['RANK'] == os.environ['SLDA_SLOW_RANK']:
        time.sleep(float(os.environ['SLDA_SLOW_SECONDS']))
    crash_point(name)


if __name__ == '__main__':
    features.crash_point = slow_crash_point
    sys.exit(experiment.main())
