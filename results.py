"""The results folder of a run: what it holds, in which order files are written, and how a run resumes.

After every batch of the plan, with NAME the batch's name (for the class-incremental ordering the original's
min_trained_0_max_trained_X, X the classes seen so far; batch_1, batch_2, ... for the others, zero-padded to the
width of the last number, batch_01 ... batch_10, so that the names sort in order):
    preds_NAME.pt                       test probabilities (unless --save_preds says otherwise)
    accuracies_NAME.json                {"seen_classes_top1": [...], "seen_classes_top5": [...]}, in percent
    summary.json                        per batch and totals, "finished": false until the end; "metrics" per
                                        output layer (metrics.py)
    accuracy_matrix.csv                 the accuracy matrix of every output layer so far (metrics.matrix_csv)
    heads_NAME.pth                      the other output layers' state (with --heads)
    slda_model_weights_NAME.pth         the SLDA state; written last, it marks the batch finished
and at the end slda_model_weights_final.pth and summary.json with "finished": true. config.json, the
class-order label files (class-incremental ordering) and stream_order.txt are written before any work. Files
are written atomically, in this order, on a background thread (utils.BackgroundFiles); a write that fails
stops the ones after it, so a model file always means its batch's other files are complete.
"""
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version

try:
    import fcntl
except ImportError:       # Windows: runs into one folder are not guarded against each other
    fcntl = None

import numpy as np
import torch

from config import SCHEMA_VERSION, flag_of_setting
from errors import InputError, MissingFileError
from metrics import matrix_csv
import runs
from protocol import save_class_order
from utils import UserError, load_json, safe_torch_load, save_json, save_tensor, save_text

FINAL_MODEL = 'slda_model_weights_final.pth'


def difference(setting, saved, now):
    """How a resumed run's ``setting`` (a dotted name of Config.results_settings) differs from the saved run's, for
    the refusal: the flag and both values; for the feature cache, whose location is free to change, whether one
    is used."""
    if setting.rsplit('.', 1)[-1] == 'feature_cache':
        return ('--feature_cache: the run read its features from a feature cache (rounded to its --cache_dtype); '
                'give --feature_cache DIR' if saved else
                '--feature_cache: the run extracted its features without a cache; leave --feature_cache out')
    return f'{flag_of_setting(setting)}: saved {saved!r}, now {now!r}'


def read_offline_accuracies(path, num_batches):
    """{"top1": [...], "top5": [...]} in percent, one accuracy per batch, or None without a file.

    The file gives fractions in (0, 1] or percentages in (0, 100]; it is read as percent when any value
    exceeds 1 (an offline model at or below 1% accuracy is not a useful reference), and refused when it mixes
    values above 1 with values at or below 1: read as percent, the fractions would make Omega 100x too large."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise MissingFileError(f'offline accuracies file {path} not found')
    offline = load_json(path)
    lists = {key: offline.get(key) if isinstance(offline, dict) else None for key in ('top1', 'top5')}
    numbers = [v for values in lists.values() if isinstance(values, list) for v in values if is_number(v)]
    scale = 1 if any(v > 1 for v in numbers) else 100
    for key, values in lists.items():
        if not isinstance(values, list) or len(values) != num_batches or \
                not all(is_number(v) and 0 < v * scale <= 100 for v in values):
            raise InputError(f'offline accuracies {path}: "{key}" must list {num_batches} accuracies, one per '
                             f'increment, as fractions in (0, 1] or percentages in (0, 100]')
    if scale == 1 and any(0 < v <= 1 for v in numbers):
        raise InputError(f'offline accuracies {path} mixes fractions and percentages ({min(numbers):g} beside '
                         f'{max(numbers):g}): give every accuracy as a fraction in (0, 1] or every one in percent')
    return {key: [v * scale for v in values] for key, values in lists.items()}


def is_number(value):
    """A JSON number: not a bool (JSON's true is no accuracy), NaN excluded by the range checks."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_images_digest(test, plan):
    """A hash of the names of every test image the plan evaluates, for config.json."""
    indices = sorted(set(np.concatenate([batch.test_indices for batch in plan]).tolist()))
    text = '\n'.join(test.image_name(index) for index in indices)
    return hashlib.sha256(text.encode(errors='surrogateescape')).hexdigest()


def mean_ratio(ours, reference):
    """{'top1', 'top5'}: the mean over batches of our accuracy / the reference's; ``ours`` and ``reference`` are
    lists of {'top1', 'top5'} per batch. None for a key where the reference scored 0 on a batch."""
    return {key: None if any(r[key] == 0 for r in reference) else
            sum(o[key] / r[key] for o, r in zip(ours, reference)) / len(ours) for key in ('top1', 'top5')}


def omega_vs_offline(rows):
    """With an offline head: for every other head, the mean over batches of its accuracy / the offline head's."""
    if not rows or 'offline' not in rows[0]['heads']:
        return None
    offline = [row['heads']['offline'] for row in rows]
    return {name: mean_ratio([row['heads'][name] for row in rows], offline)
            for name in rows[0]['heads'] if name != 'offline'}


def stream_order(train, plan):
    """stream_order.txt: a line per training image in the order planned, <batch number><TAB><image name>
    (its path relative to the images folder, or its index); yields the text in pieces."""
    for batch in plan:
        yield ''.join(f'{batch.number}\t{train.image_name(index)}\n' for index in batch.train_indices.tolist())


def omega(rows, offline):
    """Omega_all of Hayes et al.: the mean over batches so far of our accuracy / the offline model's."""
    if offline is None or not rows:
        return None
    return mean_ratio([row['heads']['slda'] for row in rows],
                      [{'top1': top1, 'top5': top5} for top1, top5 in zip(offline['top1'], offline['top5'])])


def covariance_detail(config):
    """What SLDA's covariance is in a run of ``config``, in words (config.json's covariance_detail, the console).
    A fixed covariance keeps the one it starts from: without a base initialisation that is the identity, and
    SLDA is then exactly nearest class mean, whatever "fixed" suggests."""
    pooled = config.slda.covariance_update == 'pooled'
    if config.slda.plastic_covariance:
        return 'plastic (the exact pooled within-class covariance)' if pooled else 'plastic (updated by every sample)'
    if config.stream.base_init:
        return f"fixed (the base initialisation's {'pooled ' if pooled else ''}estimate, kept)"
    return 'fixed (identity: no base initialisation, so nearest class mean)'


def describe_run(config, order, order_source, order_warning, extractor, feature_dim, device):
    """config.json: the settings (all, and those that change results), the class order, the network and the
    platform. ``covariance`` is 'plastic' or 'fixed' as in earlier releases; ``covariance_detail`` says what the
    covariance is (covariance_detail)."""
    return {
        'schema_version': SCHEMA_VERSION, 'expt_name': config.run.expt_name, 'dataset': config.data.dataset,
        'ordering': config.stream.ordering, 'covariance': config.slda.covariance,
        'covariance_detail': covariance_detail(config), 'heads': list(config.output.heads),
        'results_settings': config.results_settings(), 'settings': config.to_json(),
        'class_order': None if order is None else order.tolist(), 'class_order_source': order_source,
        'class_order_warning': order_warning,
        'feature_dim': feature_dim, 'weights': extractor.weights_report, 'network': extractor.identity,
        'partial_checkpoint': extractor.partial or None, 'preprocessing': dataclasses.asdict(extractor.preprocessing),
        'autocast_bfloat16': extractor.amp,
        'versions': {'python': platform.python_version(), 'torch': torch.__version__,
                     'torchvision': version('torchvision'), 'numpy': np.__version__},
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
    }


class ResultsFolder:
    """The save folder of one run; ``files`` (a utils.BackgroundFiles) writes its files in order."""

    def __init__(self, path, files):
        self.path = path
        self.files = files
        self.lock = None        # the open lock file, held while this process lives
        self.created = False    # whether claim made the folder: a start that fails before any output removes it
        self.rows = []          # summary.json's "increments": one dict per finished batch
        self.skipped_before = []    # images skipped as unreadable before a resume
        self.accuracies = {'seen_classes_top1': [], 'seen_classes_top5': []}

    def file(self, name):
        return os.path.join(self.path, name)

    def claim(self, settings, resume):
        """Create the folder, prove it writable and lock it before any work. A folder holding a run is refused
        unless ``resume``, and then only when ``settings`` (config.Config.results_settings()) match the saved
        ones; temporary files of interrupted writes are removed. A folder in which no batch finished holds
        nothing to protect and is started afresh. Returns True when the folder holds a run to continue."""
        try:
            self.created = not os.path.exists(self.path)
            os.makedirs(self.path, exist_ok=True)
            # a new file of a name of its own: whatever is in the folder (a link, say) is never written through
            fd, probe = tempfile.mkstemp(dir=self.path, prefix='.write_test.', suffix='.tmp')
            try:
                os.write(fd, b'ok')
            finally:
                os.close(fd)
                os.remove(probe)
        except OSError as e:
            raise UserError(f'cannot write to --save_dir {self.path}: {e.strerror}') from None
        self._lock()
        for name in os.listdir(self.path):        # the folder is ours: any temporary file is a killed write's
            if name.startswith('.') and name.endswith('.tmp'):
                os.remove(self.file(name))
        if not os.path.exists(self.file('config.json')) or not self.finished_batches():
            return False
        if not resume and self.is_finished():
            raise UserError(f'{self.path} already holds a finished run; to run it again, choose another '
                            f'--save_dir / --expt_name or delete the folder')
        if not resume:
            raise UserError(f'{self.path} already holds an unfinished run; pass --resume to continue it, or choose '
                            f'another --save_dir / --expt_name')
        try:
            saved_run = runs.load_run(self.path)
        except ValueError as e:
            raise UserError(f'cannot --resume {self.path}: {e}') from None
        if saved_run.schema_version != SCHEMA_VERSION:
            raise UserError(f'cannot --resume {self.path}: it was written by another release of this program '
                            f'(config.json schema {saved_run.schema_version}, this one reads {SCHEMA_VERSION}); '
                            f'its results stay readable by plot_results.py and summarize_runs.py, but continuing '
                            f'it needs a new --save_dir')
        saved = saved_run.results_settings
        current = json.loads(json.dumps(settings))      # as saved: tuples become lists
        differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differing:
            details = '; '.join(difference(k, saved.get(k), current.get(k)) for k in differing)
            raise UserError(f'cannot --resume {self.path} with different settings ({details})')
        return True

    def finished_batches(self):
        """The names of the batches whose model file is written, which marks them finished."""
        return [name[len('slda_model_weights_'):-len('.pth')] for name in os.listdir(self.path)
                if name.startswith('slda_model_weights_') and name.endswith('.pth') and name != FINAL_MODEL]

    def is_finished(self):
        """Whether the folder holds a finished run: its final model and a summary that says so."""
        return os.path.exists(self.file(FINAL_MODEL)) and (self.saved_summary() or {}).get('finished', False)

    def saved_summary(self):
        """summary.json as saved, or None."""
        return load_json(self.file('summary.json')) if os.path.exists(self.file('summary.json')) else None

    def _lock(self):
        """Own the folder while this process lives: an exclusive lock on .lock, which the operating system
        releases when the process ends, however it ends, so a killed run leaves no stale lock."""
        if fcntl is None:
            return
        path = self.file('.lock')
        try:
            lock = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666), 'r+')
        except OSError as e:
            if os.path.islink(path):      # O_NOFOLLOW: a link is not opened, so its target is never written
                raise UserError(f'{path} is a symbolic link, not the lock file this program writes; remove it') \
                    from None
            raise UserError(f'cannot create the lock file {path}: {e.strerror}') from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or 'unknown'
            lock.close()
            raise UserError(f'{self.path} is in use by another run (process {holder}); wait for it to end, or '
                            f'choose another --save_dir / --expt_name') from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
        except OSError as e:
            lock.close()
            raise UserError(f'cannot write the lock file {path}: {e.strerror}') from None
        self.lock = lock

    def release(self):
        """Give up the folder: the end of the process does it too, this for a run within a longer one. A folder
        this run made and wrote nothing into (it stopped before any work) is removed, so that no empty run
        folder is left behind."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None
            if self.created and os.listdir(self.path) == ['.lock']:
                os.remove(self.file('.lock'))
                os.rmdir(self.path)

    def check_resume(self, config, splits, plan):
        """On --resume: refuse, naming it, when what the saved run's results depend on has changed since: the
        class order (label files), the network (its weights' hash), the training stream (stream_order.txt)
        or the test images of the plan."""
        saved = load_json(self.file('config.json'))
        for key, what in (('class_order', 'the class order differs from the saved run (label files changed?)'),
                          ('network', 'the network differs from the saved run (checkpoint or weights changed?)'),
                          ('test_images', 'the test images differ from the saved run (files added or removed?)')):
            if saved.get(key) != config[key]:
                raise UserError(f'cannot --resume {self.path}: {what}')
        path = self.file('stream_order.txt')
        saved_lines = open(path, encoding='utf-8', errors='surrogateescape').read().splitlines() \
            if os.path.exists(path) else []
        lines = ''.join(stream_order(splits.train, plan)).splitlines()
        if saved_lines != lines:
            first = next((i for i, (a, b) in enumerate(zip(saved_lines, lines)) if a != b),
                         min(len(saved_lines), len(lines)))
            saved_line = saved_lines[first] if first < len(saved_lines) else 'nothing'
            line = lines[first] if first < len(lines) else 'nothing'
            raise UserError(f'cannot --resume {self.path}: the training stream differs from the saved run '
                            f'(stream_order.txt line {first + 1}: saved {saved_line!r}, now {line!r}); images '
                            f'added, removed or renamed?')

    def save_config(self, config, splits, order, plan):
        """config.json, stream_order.txt and (with a class ``order``) the class order as label files in the
        original's format, written now."""
        if order is not None:
            save_class_order(splits, order, self.path)
        save_json(self.file('config.json'), config)
        self.files.write(save_text, self.file('stream_order.txt'), stream_order(splits.train, plan))

    def resume(self, plan, heads, replay):
        """Load the state after the last finished batch of ``plan`` into ``heads`` ({name: output layer}, SLDA
        among them); ``replay(batches)`` yields the (X, y) of those batches for a layer that keeps them. Returns
        how many batches are finished (0 when none is)."""
        finished = [i for i, batch in enumerate(plan)
                    if os.path.exists(self.file(f'slda_model_weights_{batch.name}.pth'))]
        if not finished:
            return 0
        done = finished[-1]
        name = plan[done].name
        heads['slda'].load_model(self.path, f'slda_model_weights_{name}')
        if len(heads) > 1:
            states = safe_torch_load(self.file(f'heads_{name}.pth'))
            for head_name, head in heads.items():
                if head_name != 'slda':
                    head.load_state_dict(states[head_name], lambda: replay(plan[:done + 1]))
        self.accuracies = load_json(self.file(f'accuracies_{name}.json'))
        if os.path.exists(self.file('summary.json')):
            saved = load_json(self.file('summary.json'))
            self.rows = saved['increments'][:done + 1]
            self.skipped_before = saved.get('skipped_images', [])
        return done + 1

    def record(self, batch, row, probabilities, heads, save_preds, summary):
        """Queue the files of a finished batch: ``row`` (its summary line, accuracies per output layer), SLDA's
        test probabilities when ``save_preds``, ``summary(rows)``'s summary and its accuracy matrix, the other
        output layers' state, SLDA's model checkpoint (last)."""
        row['train_images_so_far'] = sum(previous['train_images'] for previous in self.rows) + row['train_images']
        self.rows.append(row)
        slda = row['heads']['slda']
        self.accuracies = {'seen_classes_top1': self.accuracies['seen_classes_top1'] + [slda['top1']],
                           'seen_classes_top5': self.accuracies['seen_classes_top5'] + [slda['top5']]}
        name = batch.name
        if save_preds:
            self.files.write(save_tensor, self.file(f'preds_{name}.pt'), probabilities)
        self.files.write(save_json, self.file(f'accuracies_{name}.json'), self.accuracies)
        self.write_summary(summary(self.rows, finished=False))
        if len(heads) > 1:
            self.files.write(save_tensor, self.file(f'heads_{name}.pth'),
                             {head_name: head.state_dict() for head_name, head in heads.items() if head_name != 'slda'})
        self.files.write(save_tensor, self.file(f'slda_model_weights_{name}.pth'), heads['slda'].checkpoint())

    def record_scores(self, batch, scores):
        """Queue the open-set novelty scores of a batch (open_set.OpenSetEvaluation) as ood_scores_<batch>.pt."""
        self.files.write(save_tensor, self.file(f'ood_scores_{batch.name}.pt'), scores)

    def finish(self, model, summary):
        """Write the final model and the finished summary, wait for every write; returns the summary."""
        self.files.write(save_tensor, self.file(FINAL_MODEL), model)
        finished = summary(self.rows, finished=True)
        self.write_summary(finished)
        self.files.finish()
        return finished

    def write_summary(self, summary):
        """Queue summary.json and accuracy_matrix.csv, made from its metrics."""
        self.files.write(save_json, self.file('summary.json'), summary)
        self.files.write(save_text, self.file('accuracy_matrix.csv'), [matrix_csv(summary['metrics'])])


def make_summary(rows, offline, readers, started, prepare_seconds, finished, skipped_before=(), shared=None,
                 metrics=None):
    """summary.json: per batch ``rows``, final accuracies, Omega_all, ``metrics`` (metrics.run_metrics), seconds
    and extraction counts, and the images skipped as unreadable (sorted, with ``skipped_before`` a resume, so that an interrupted run lists
    what an uninterrupted one does). Under torchrun, ``shared`` is (images each process extracted, seconds the
    processes took together): the throughput is theirs, not this process's reading of the cache."""
    extract = sum(row['extract_seconds'] for row in rows)
    images = sum(reader.images_extracted for reader in readers)
    images_per_process, shared_seconds = shared or ([images], None)
    throughput = (sum(images_per_process), shared_seconds) if shared else (images, extract)
    heads = [head for row in rows for head in row['heads'].values()]
    return {
        'schema_version': SCHEMA_VERSION,
        'finished': finished,
        'accuracy_unit': 'percent',
        'increments': list(rows),
        'final': {name: {'top1': head['top1'], 'top5': head['top5']} for name, head in rows[-1]['heads'].items()}
        if rows else None,
        'omega_all': omega(rows, offline),
        'omega_vs_offline': omega_vs_offline(rows),
        'metrics': metrics,
        'seconds': {'prepare': round(prepare_seconds, 3), 'extract': round(extract, 3),
                    'fit': round(sum(head['fit_seconds'] for head in heads), 3),
                    'evaluate': round(sum(head['eval_seconds'] for head in heads), 3),
                    'extract_across_processes': None if shared_seconds is None else round(shared_seconds, 3),
                    'total_this_process': round(time.perf_counter() - started, 3)},
        'images_extracted_this_process': images,
        'processes': len(images_per_process),
        'images_extracted_per_process': images_per_process,
        'images_per_second': round(throughput[0] / throughput[1], 1) if throughput[1] and throughput[0] else None,
        'skipped_images': sorted(set(skipped_before).union(*(reader.skipped for reader in readers))),
    }
