"""A CORe50-shaped folder for the tests of data.py and the CORe50 runs: 11 sessions, one object per category, real
file names, 3 frames on the 1 fps grid per clip plus stray frames and a file that is no frame."""
import os

import numpy as np
from PIL import Image

OBJECTS = [1, 6, 11, 16, 21, 26, 31, 36, 41, 46]       # one object of each category
KEPT_FRAMES = [10, 30, 50]
STRAY_FRAMES = [11, 20]                                  # not on the 1 fps grid: left out


def build_core50(root):
    """The folder at ``root`` (made); returns ``root``."""
    rng = np.random.default_rng(0)
    for session in range(1, 12):
        for obj in OBJECTS:
            folder = root / f's{session}' / f'o{obj}'
            folder.mkdir(parents=True)
            for frame in KEPT_FRAMES + STRAY_FRAMES:
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'C_{session:02d}_{obj:02d}_{frame:03d}.png')
            (folder / 'notes.txt').write_text('not a frame')
    return root


def parse(name):
    """(session, object, frame) of a path s<S>/o<O>/C_SS_OO_FFF.png."""
    session, obj, frame = os.path.basename(name)[2:-4].split('_')
    return int(session), int(obj), int(frame)
