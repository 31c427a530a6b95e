"""Small helpers shared by the model, the driver and the feature cache: atomic files, safe loading, metrics."""
import json
import lzma
import os
import pickle
import re
import signal
import socket
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from errors import InputError, MissingFileError


class UserError(InputError):
    """A problem with the settings together or with the results folder (it holds another run, say), raised by
    the driver (experiment.py, results.py); a ValueError, printed in one line by the command line."""


def crash_point(name):
    """Fault injection for the resume tests: SIGKILL this process at a named point when asked to.

    SLDA_CRASH_AT is ``PREFIX`` or ``PREFIX:N``: die the N-th time (1-based) a point whose name starts with
    PREFIX is reached; with SLDA_CRASH_RANK, only in the torchrun process of that rank. Points:
    ``increment_start``, ``extract_batch``, and ``write/<file name>`` between writing a temporary file and
    renaming it. Unset in normal use, where this is one dictionary lookup.
    """
    target = os.environ.get('SLDA_CRASH_AT')
    if not target or os.environ.get('SLDA_CRASH_RANK', os.environ.get('RANK', '0')) != os.environ.get('RANK', '0'):
        return
    prefix, _, nth = target.partition(':')
    if name.startswith(prefix):
        crash_point.hits += 1
        if crash_point.hits >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


crash_point.hits = 0


def _umask():
    mask = os.umask(0o022)     # reading the umask means setting it; done once, at import, before any thread
    os.umask(mask)
    return mask


# Permissions of a newly created file (0644 under the usual umask 022); mkstemp alone would give 0600, and
# results or a feature cache shared with a group would be unreadable to it.
NEW_FILE_MODE = 0o666 & ~_umask()


# Temporary files are named .<file name>.<host>-<pid>.<random>.tmp, so that a later run can tell the
# leftovers of a killed process from the files of one still writing (into a feature cache shared with it).
HOST = socket.gethostname().replace('.', '_')
STALE_AFTER_SECONDS = 86400     # a temporary file of another host's process this old is a leftover too


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader sees either the old file or the complete new one, whenever the process dies. The temporary file is
    created anew (never an existing file or a link's target), and the rename replaces a link at ``path`` rather
    than writing through it. An OSError that names no file (write(2) on a full disk, say) is raised naming
    ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.{HOST}-{os.getpid()}.',
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:      # owns fd from here: closed whatever happens next
            os.chmod(tmp, NEW_FILE_MODE)     # os.fchmod is missing on Windows before Python 3.13
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point('write/' + os.path.basename(path))
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from e
        raise


def is_stale_temporary(name, age_seconds):
    """Whether ``name`` is a temporary file of ``atomic_write`` whose writer is gone: a process of this host that
    no longer runs, or any writer after ``STALE_AFTER_SECONDS``."""
    if not (name.startswith('.') and name.endswith('.tmp')):
        return False
    if age_seconds > STALE_AFTER_SECONDS:
        return True
    host, _, pid = name[:-len('.tmp')].rsplit('.', 2)[-2].rpartition('-')
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:      # a process of another user
        return False
    return False


def remove_stale_temporaries(folder):
    """Remove the temporary files that killed writers left in ``folder`` (if it exists)."""
    if not os.path.isdir(folder):
        return
    now = time.time()
    for entry in os.scandir(folder):
        try:
            if entry.is_file() and is_stale_temporary(entry.name, now - entry.stat().st_mtime):
                os.remove(entry.path)
        except FileNotFoundError:
            pass        # removed meanwhile, or renamed into place by its writer


class BackgroundFiles:
    """One thread that reads and writes files in the order they are submitted, while the caller computes.

    ``read`` returns a future. ``write`` returns nothing: a write that fails stops every write submitted
    after it (so a file that marks an increment finished is never written after a lost one), and its
    error is raised by every later ``write`` and by ``finish``. ``wait`` blocks until the thread is idle,
    as before a DataLoader forks its workers; ``finish`` waits, then raises a failed write's error.
    """

    def __init__(self):
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='slda-files')
        self._error = None

    def read(self, function, *args):
        return self._thread.submit(function, *args)

    def write(self, function, *args):
        self._raise_error()
        self._thread.submit(self._write, function, args)

    def _write(self, function, args):
        if self._error is None:
            try:
                function(*args)
            except BaseException as e:
                self._error = e

    def _raise_error(self):
        if self._error is not None:
            raise self._error

    def wait(self):
        self._thread.submit(lambda: None).result()

    def finish(self):
        self.wait()
        self._raise_error()

    def close(self):
        """Wait for everything submitted, then stop the thread; a failed write's error is left to ``finish``."""
        self._thread.shutdown(wait=True)


def save_json(path, obj, indent=2):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=indent) + '\n').encode()))


def save_text(path, pieces):
    """Write the strings of the iterable ``pieces``, UTF-8, atomically; file names that were not UTF-8 (read as
    surrogate escapes) keep their bytes."""
    atomic_write(path, lambda f: f.writelines(piece.encode(errors='surrogateescape') for piece in pieces))


class _WriteErrors:
    """The ``write`` and ``flush`` of a binary file, keeping the first OSError that ``write`` raised: torch.save's
    zip writer swallows it and raises a RuntimeError of its own ('unexpected pos ...')."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.file.flush()


def save_tensor(path, obj):
    """torch.save, atomically. A write that fails (a full disk: ENOSPC) raises its OSError naming ``path``, also
    where PyTorch's zip writer turns it into a RuntimeError; other errors are raised as they are."""
    def write(f):
        file = _WriteErrors(f)
        try:
            torch.save(obj, file)
        except RuntimeError:
            if file.error is None:
                raise
            raise file.error from None
    atomic_write(path, write)


def nearest_existing(path):
    """``path`` made absolute, or its nearest ancestor that exists (a folder or a file): where a path that is not
    there yet would be made, or what stops it being made."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def check_output_file(path):
    """InputError naming ``path`` unless a file can be written there: its folder exists and takes a new file, and
    no folder, nor a file that cannot be written, stands at ``path``. Called before any work, so that a mistyped
    output costs no extraction or export (export_model.py and export_features.py)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f'{path}: its folder does not exist')
    if os.path.isdir(path):
        raise InputError(f'{path} is a folder: give the name of a file to write')
    try:
        # a probe file of a name of its own: os.access says yes to root even where nothing can be written (/proc)
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix='.write_test.', suffix='.tmp')
        os.close(descriptor)
        os.remove(probe)
        if os.path.exists(path):
            open(path, 'ab').close()
    except OSError as e:
        raise InputError(f'cannot write {path} ({e.strerror or e}): choose another output file') from None


def save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f'{path} is not valid JSON ({e})') from None


def _refused_object(error):
    """What the weights-only unpickler of ``torch.load`` refused, from its UnpicklingError ``error``: the line
    naming the object ('Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default'),
    which PyTorch puts after advice on loading the file unsafely; else the message's first line."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(error)).strip()      # PyTorch highlights its advice for terminals
    found = re.search(r'WeightsUnpickler error: (.+?)\.?$', text, re.MULTILINE)
    if found:
        return found.group(1).split('. ')[0]
    return text.splitlines()[0] if text else 'no detail given'


def safe_torch_load(path, mmap=False):
    """``torch.load`` on the CPU with ``weights_only=True``: tensors and plain data only, never code. A zip
    archive (what ``torch.save`` writes) is read once first to check each record's CRC-32
    (``damaged_zip_record``), which ``torch.load`` does not: a damaged file raises ValueError naming it instead of
    loading other values (about 2-3 GB/s here).

    With ``mmap``, tensors map the file instead of being copied into memory once more; only for files that are
    replaced by renaming, never rewritten in place."""
    if not os.path.isfile(path):
        raise MissingFileError(f'file not found: {path}')
    with open(path, 'rb') as f:
        start = f.read(4)
    # torch.save writes a zip archive; files of PyTorch before 1.6 are a pickle (protocol 2 and up start so)
    if not (start == b'PK\x03\x04' or start[:1] == b'\x80'):
        raise InputError(f'{path} is not a PyTorch file: torch.save writes a zip archive, this file starts with '
                         f'{start!r}')
    try:
        if start == b'PK\x03\x04':
            damaged = damaged_zip_record(path)
            if damaged:
                raise InputError(f'{path} is damaged: the data of its record {damaged} fails its CRC-32 check (a '
                                 f'bit flipped on disk or in a copy); restore the file or make it again')
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise InputError(f'refusing to load {path}: it holds objects other than tensors and plain Python data '
                         f'(numpy arrays, classes of other programs), which are loaded only by unpickling them '
                         f'({_refused_object(e)}). Re-save it as a plain state dict of tensors.') from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f'could not read {path} as a PyTorch file: {e}') from None


def damaged_zip_record(path):
    """The name of the first record of the zip archive at ``path`` (a ``torch.save`` file) whose data does not
    match its CRC-32, or None. ``torch.load`` checks none: a flipped bit in a tensor's data loads as a different
    value. Records with no CRC-32 stored (0, as ``torch.serialization.set_crc32_options(False)`` saves them) are
    not checked. Raises zipfile.BadZipFile for an archive that cannot be read at all."""
    with zipfile.ZipFile(path) as archive:
        for record in archive.infolist():
            if record.CRC == 0 and record.file_size:
                continue
            try:
                with archive.open(record) as data:
                    while data.read(1 << 24):
                        pass
            except zipfile.BadZipFile as e:
                if 'CRC' not in str(e):
                    raise
                return record.filename
            except (zlib.error, lzma.LZMAError, NotImplementedError, EOFError) as e:   # a damaged method or length
                raise zipfile.BadZipFile(f'record {record.filename}: {e}') from None
    return None


def topk_accuracy(scores, labels, ks=(1, 5)):
    """Percentage of rows whose label is among the k highest scores, for each k, in percent as the original's
    ``accuracy`` reports it.

    Rank by scores (or log-probabilities), never by float32 softmax probabilities: SLDA's scores differ by hundreds,
    so every class but the best has probability exactly 0 and a ranking of those would be decided by how ties are
    broken. Ties among scores count against the label, so the result does not depend on the order of the classes:
    a row is a hit at k when fewer than k other classes score at least as high as its label (a NaN counts as at
    least as high). A model that scores every class alike thus gets 0% until k reaches the class count.

    scores: (n, C), n >= 1, on any device; labels: (n,) integers in [0, C). Returns a list of floats in
    [0, 100], 100 * hits / n for each k. Raises ValueError (InputError) for other shapes or labels outside [0, C).
    """
    return [percent_of(hits) for hits in topk_hits(scores, labels, ks)]


def percent_of(hits):
    """100 * (true entries) / (entries) of a non-empty bool tensor: an accuracy in percent from ``topk_hits``."""
    return int(hits.sum()) * 100 / len(hits)


def topk_hits(scores, labels, ks=(1, 5)):
    """For each k, a bool tensor (n,) on the device of ``scores``: whether row i's label is among its k highest
    scores, ties and NaN counting against the label as ``topk_accuracy`` says (which counts these). Same arguments
    and errors as ``topk_accuracy``."""
    if scores.dim() != 2 or len(scores) == 0:
        raise InputError(f'scores must have shape (n, C) with at least one row (no rows have no accuracy), got '
                         f'{tuple(scores.shape)}')
    labels = torch.as_tensor(labels, device=scores.device).view(-1)
    if len(labels) != len(scores) or not bool(((labels >= 0) & (labels < scores.shape[1])).all()):
        found = f' in [{int(labels.min())}, {int(labels.max())}]' if len(labels) else ''
        raise InputError(f'labels must be {len(scores)} integers in [0, {scores.shape[1]}), one per row of scores; '
                         f'got {len(labels)}{found}')
    label_scores = scores.gather(1, labels.view(-1, 1))
    # "not lower" rather than ">=": a NaN on either side counts against the label; minus 1 for the label itself.
    # A block of rows at a time (about 256 K scores), whose comparisons stay in cache: 7x faster than the whole
    # (n, C) at once for 25,000 x 5,000 scores.
    rows = max(1, (1 << 18) // max(scores.shape[1], 1))
    ahead = torch.cat([(~(scores[start:start + rows] < label_scores[start:start + rows])).sum(dim=1)
                       for start in range(0, len(scores), rows)]) - 1
    return [ahead < k for k in ks]
