"""Deep SLDA streaming experiment.

A frozen CNN turns images into pooled features; StreamingLDA is initialised on the first classes
(fit_base) and then learns the remaining classes a few at a time, one pass over each image. After every
increment it is evaluated on the test images of all classes seen so far, and the probabilities,
accuracies and model are saved.

    python experiment.py                                   # handwritten digits, runs in seconds
    python experiment.py --dataset imagenet --images_dir /data/imagenet \\
        --base_init_ckpt image_files/imagenet_100_class_ckpt.pth --streaming_update_sigma

From Python: ``Experiment(config.make_config(dataset='digits', save_dir='runs/digits')).run()``.
"""
import os
import shutil
import sys
import time
import traceback

import numpy as np
import torch

import cli
import distributed
import protocol
from config import support_folders
from errors import ProjectError, error_line
from feature_cache import listings_folder
from features import build_readers
from heads import HEADS
from metrics import first_batches, run_metrics
from open_set import OpenSetEvaluation
from projection import ProjectedReader, RandomProjection, check_memory
from reporting import ConsoleReporter, LearningCurveReporter
from results import ResultsFolder, describe_run, make_summary, read_offline_accuracies, test_images_digest
from utils import BackgroundFiles, UserError, crash_point, nearest_existing, percent_of, topk_hits


class Experiment:
    """One streaming experiment of a ``config.Config``: list the data, plan the stream, build the feature readers
    and the output layers, then fit, evaluate and record each batch of the plan into ``config.run.save_dir``.
    ``reporters`` are told of each step (see reporting.py)."""

    def __init__(self, config, reporters=None):
        self.config = config
        self.reporters = reporters if reporters is not None else default_reporters(config)
        self.batches_finished = 0       # in this process, or found saved on --resume
        self.folder = None

    def batches_saved(self):
        """The batches finished whose model file is on disk: the files are written in the background, and one
        that failed (a full disk) leaves its batch and those after it unsaved."""
        if not self.batches_finished:
            return 0
        try:
            return min(self.batches_finished, len(self.folder.finished_batches()))
        except OSError:         # the folder itself is gone (removed, unmounted): nothing in it to resume
            return 0

    def run(self):
        """Run the experiment; returns summary.json's content (None on a torchrun process other than rank 0,
        which only extracts features)."""
        started = time.perf_counter()
        group = None
        if distributed.started_by_torchrun():
            if not self.config.cache.feature_cache:
                raise UserError('under torchrun, --feature_cache DIR is needed: the processes share the extracted '
                                'features through it (a folder every process can reach), and rank 0 streams SLDA '
                                'from it')
            group = distributed.Group(self.config.run.dist_timeout,
                                      cuda=torch.device(self.config.run.device).type == 'cuda')
        try:
            return self.stream(group, started)
        finally:
            if group:
                group.close()

    def stream(self, group, started):
        """List, plan, claim the folder, read the features (extracting them across processes under torchrun),
        then fit, evaluate and record each batch; returns summary.json's content (None on ranks but 0)."""
        config = self.config
        splits = list_splits(config)
        order, order_source, order_warning = class_order(config, splits)
        self.report('warn', order_warning)
        plan = make_plan(config, splits, order)
        files = BackgroundFiles()
        folder = self.folder = ResultsFolder(config.run.save_dir, files)
        if not (config.run.resume and folder.is_finished()):   # a finished run is left as it is: writes nothing
            check_preds_space(config, plan, splits.num_classes)
        self.report('warn', config.ordering.plan_warning(config.stream.options, splits))
        offline = read_offline_accuracies(config.run.offline_accuracies, len(plan))
        if config.output.random_projection:
            check_memory(config.output.random_projection, splits.num_classes, getattr(torch, config.slda.slda_dtype),
                         config.run.device)
        device = torch.device(config.run.device)
        if group and device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', group.local_rank)
        try:
            continuing, finished = claim_folder(config, folder, group)
            if finished:
                self.report('warn', f'{config.run.save_dir} holds a finished run; it is left as it is')
                return folder.saved_summary()
            train, test, extractor, feature_dim = build_readers(config, splits, plan, device, files)
            shared = extract_across_processes(group, {'train': train, splits.test_name: test}, files)
            if group and group.rank != 0:
                return None
            train, test, head_dim = project(config, train, test, feature_dim)
            description = describe_run(config, order, order_source, order_warning, extractor, feature_dim, device)
            description.update(classes=list(splits.classes), transform=splits.transform_description,
                               test_images=test_images_digest(splits.test, plan))
            if continuing:
                folder.check_resume(description, splits, plan)
            folder.save_config(description, splits, order, plan)
            self.report('start', config, splits, plan, order_source, extractor, feature_dim, device)
            heads = build_heads(config, head_dim, splits.num_classes, device)
            first = folder.resume(plan, heads, lambda batches: (train.take(b.train_indices) for b in batches)) \
                if continuing else 0
            self.batches_finished = first
            self.report('resumed', first, plan)
            class_batches = first_batches(plan, splits.train.labels, splits.num_classes)
            per_class_curves = not config.ordering.tests_seen_classes
            summary = make_summary_writer(offline, (train, test), started, shared, folder,
                                          lambda rows: run_metrics(rows, class_batches, per_class_curves))
            open_set = open_set_evaluation(config, splits, order)
            if first < len(plan):
                train.prefetch(plan[first].train_indices)
                test.prefetch(plan[first].test_indices)
            for batch, following in zip(plan[first:], plan[first + 1:] + [None]):
                crash_point('increment_start')
                save_preds = saves_preds(config, following)
                row, probabilities = fit_and_evaluate(heads, batch, following, train, test, device, save_preds)
                if config.slda.shrinkage == 'oas':
                    row['heads']['slda']['shrinkage'] = heads['slda'].shrinkage_used
                if open_set:
                    row['open_set'], scores = open_set.evaluate(heads['slda'], test, batch)
                    folder.record_scores(batch, scores)
                folder.record(batch, row, probabilities, heads, save_preds, summary)
                del probabilities       # the writer holds them until written; the next batch need not
                self.batches_finished += 1
                self.report('batch', batch, len(plan), row)
            summary = folder.finish(heads['slda'].checkpoint(), summary)
        finally:
            files.close()
            folder.release()
        self.report('finish', summary, plan, config.run.save_dir)
        return summary

    def report(self, event, *details):
        for reporter in self.reporters:
            getattr(reporter, event)(*details)


def extract_across_processes(group, readers, files):
    """Under torchrun (``group``), every process extracts its share of the classes the cache lacks; returns (images
    each process extracted, seconds it took), or None for a single process, which extracts as it reads."""
    if group is None:
        return None
    tick = time.perf_counter()
    per_process = distributed.extract_shares(group, readers, files)
    return per_process, time.perf_counter() - tick


def held_out_test_images(config, splits, order):
    """(m,) int64: the test images of the classes --ood_classes holds out (none without it)."""
    held_out = protocol.held_out_classes(config.stream.options, order) if order is not None else []
    return np.flatnonzero(np.isin(splits.test.labels, held_out))


def open_set_evaluation(config, splits, order):
    """An OpenSetEvaluation of the test images of the classes --ood_classes holds out, or None."""
    images = held_out_test_images(config, splits, order)
    return OpenSetEvaluation(images) if len(images) else None


def project(config, train, test, feature_dim):
    """The readers and the output layers' feature size, with --random_projection applied to both readers."""
    if not config.output.random_projection:
        return train, test, feature_dim
    projection = RandomProjection(feature_dim, config.output.random_projection, config.output.projection_seed or 0)
    return ProjectedReader(train, projection), ProjectedReader(test, projection), projection.out_dim


def default_reporters(config):
    return [ConsoleReporter()] + ([LearningCurveReporter()] if config.run.plot else [])


def list_splits(config):
    """The dataset's splits; with --cache_check listing, the file listing is kept in the feature cache."""
    options, cache = config.data.options, config.cache.feature_cache
    listing_dir = listings_folder(cache) if cache and options.cache_check == 'listing' else None
    return config.dataset.list_splits(options, config.preprocessing, listing_dir=listing_dir,
                                      device_type=torch.device(config.run.device).type)


def class_order(config, splits):
    """(class indices in stream order, where the order came from, a warning or None); the order is None for
    orderings that draw their own."""
    options = config.stream.options
    if not config.ordering.uses_class_order:
        return None, f'{config.stream.ordering} ordering, seed {options.ordering_seed}', None
    if options.labels_dir:
        return (protocol.class_order_from_label_files(splits, options.labels_dir),
                f'label files in {options.labels_dir}', None)
    source = 'sorted' if options.class_order_seed is None else \
        f'{"" if options.class_order_rng == "torch" else "numpy "}permutation, seed {options.class_order_seed}'
    warning = None
    if config.dataset.paper_class_order:
        warning = (f'no label files ({", ".join(protocol.label_file_names(splits.name))}) in --labels_dir or '
                   f'any of {", ".join(support_folders())}: the class order is {source}, so the base classes '
                   f'are neither the paper\'s nor those the base checkpoint was trained on, and results are not '
                   f'comparable to the paper\'s. image_files/README.md says where to get the files')
    return (protocol.generated_class_order(splits.num_classes, options.class_order_seed, options.class_order_rng),
            source, warning)


def make_plan(config, splits, order):
    """The plan of the configured ordering; ``order`` is the class order of the class-incremental one."""
    if config.ordering.needs_clips and getattr(splits.train, 'clips', None) is None:
        raise UserError(f'--ordering {config.stream.ordering} needs a dataset that knows its clips (core50); '
                        f'--dataset {config.data.dataset} does not')
    plan = config.ordering.plan(config.stream.options, splits, config.stream.base_init, order, config.run.seed)
    untested = next((batch for batch in plan if len(batch.test_indices) == 0), None)
    if untested is not None:
        seen = untested.classes_seen
        raise UserError(f'batch {untested.number} ({seen} class{"es" if seen != 1 else ""} seen) has no test image '
                        f'of any class seen so far, so its accuracy is undefined: give those classes test images, or '
                        f'a class order (--labels_dir, --class_order_seed) that streams a class with test images '
                        f'first')
    return plan


def build_heads(config, feature_dim, num_classes, device):
    """{name: output layer} of the configured heads, SLDA first (the nearest-class-mean head reads its means)."""
    slda = HEADS['slda'].build(config.slda, None, feature_dim, num_classes, device)
    heads = {'slda': slda}
    for name in config.output.heads:
        if name != 'slda':
            options = config.output.options.get(name)
            heads[name] = HEADS[name].build(options, slda, feature_dim, num_classes, device)
    return heads


def saves_preds(config, following):
    """Whether the batch before ``following`` (None after the last) writes its preds file."""
    return config.run.save_preds == 'every' or (config.run.save_preds == 'final' and following is None)


def check_preds_space(config, plan, num_classes):
    """Refuse, before any work, a run whose preds files would not fit in the free space of the save folder's
    file system: each is (test images x num_classes) probabilities in SLDA's dtype. With --random_projection M,
    the model files count too: each holds an M x M covariance and C x M means (3.2 GB at M = 20,000 in float64),
    one per batch and a final one. Files already there (a resumed run's) are not counted. Raises UserError
    naming what would not fit and what to change (--save_preds final or none, a smaller --random_projection)."""
    element = torch.finfo(getattr(torch, config.slda.slda_dtype)).bits // 8
    missing = [batch for batch in plan
               if not os.path.exists(os.path.join(config.run.save_dir, f'slda_model_weights_{batch.name}.pth'))]
    preds = sum(len(batch.test_indices) * num_classes * element
                for batch, following in zip(plan, plan[1:] + [None])
                if saves_preds(config, following)
                and not os.path.exists(os.path.join(config.run.save_dir, f'preds_{batch.name}.pt')))
    dim = config.output.random_projection
    models = (len(missing) + 1) * (num_classes * dim + num_classes + dim * dim) * element if dim else 0
    usage = shutil.disk_usage(nearest_existing(config.run.save_dir))     # the file system it will be on
    # A file system that reports no size at all (/proc, some FUSE mounts) says nothing about room: the folder's
    # claim then reports whether it can be written.
    if usage.total and preds + models > usage.free:
        sizes, remedies = [], []
        if preds:
            sizes.append(f'{preds / 1e9:.2f} GB of probabilities (--save_preds {config.run.save_preds})')
            remedies.append('--save_preds final (the last batch\'s only) or none' if config.run.save_preds == 'every'
                            else '--save_preds none')
        if models:
            sizes.append(f'{models / 1e9:.2f} GB of model files (--random_projection {dim})')
            remedies.append('a smaller --random_projection')
        raise UserError(f'this run would write {" and ".join(sizes)} to {config.run.save_dir}, where '
                        f'{usage.free / 1e9:.2f} GB are free: use {" or ".join(remedies)}, or free some space')


def fit_and_evaluate(heads, batch, following, train, test, device, save_preds):
    """Fit one batch of the plan with every output layer, evaluate each on the batch's test images and start
    reading the following batch's cached features; returns (the batch's summary row, SLDA's test
    probabilities (m, C) on the CPU for the preds file when ``save_preds``, else None). Top-1 and top-5 rank
    each layer's scores: float32 probabilities tie at exactly 0 for all but the best classes
    (utils.topk_accuracy). The row also counts, per class (lists of C), the batch's test images and each layer's
    top-1 hits among them, from which metrics.py derives the accuracy matrix and per-class accuracies."""
    tick = time.perf_counter()
    X, y = train.take(batch.train_indices)
    X_test, y_test = test.take(batch.test_indices)
    extract_seconds = time.perf_counter() - tick
    if following:
        train.prefetch(following.train_indices)
        test.prefetch(following.test_indices)
    X, y = X.to(device), y.to(device)
    row = {'classes_seen': batch.classes_seen, 'train_images': len(y), 'test_images': len(y_test),
           'extract_seconds': round(extract_seconds, 3), 'heads': {},
           'test_images_per_class': torch.bincount(y_test, minlength=heads['slda'].num_classes).tolist()}
    probabilities = None
    for name, head in heads.items():
        tick = time.perf_counter()
        (head.fit_base if batch.base_init else head.fit)(X, y)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        fit_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        scores = head.decision_function(X_test)
        hits = topk_hits(scores, y_test)
        top1, top5 = map(percent_of, hits)
        num_classes = scores.shape[1]
        # NaN or +inf scores (a learning rate too large): its accuracies mean nothing; -inf is a layer's way of
        # saying never (classes not seen yet). The largest score is NaN or +inf exactly then: one reduction.
        diverged = not bool(scores.amax() < float('inf'))
        if name == 'slda' and save_preds:   # the original's preds files; its accuracies came from these, ours
            probabilities = softmax_in_place(scores)            # from the scores
        del scores              # before the next layer scores
        row['heads'][name] = {'top1': top1, 'top5': top5, 'samples_seen': head.samples_seen,
                              'top1_hits_per_class': torch.bincount(y_test[hits[0].cpu()],
                                                                    minlength=num_classes).tolist(),
                              'fit_seconds': round(fit_seconds, 3),
                              'eval_seconds': round(time.perf_counter() - tick, 3), 'diverged': diverged}
    return row, probabilities


def softmax_in_place(scores, rows=1024):
    """``scores`` (n, C) replaced by their softmax over the classes, ``rows`` rows at a time: the values of
    ``torch.softmax(scores, dim=1)`` without a second (n, C) array. Returns scores."""
    for start in range(0, len(scores), rows):
        block = scores[start:start + rows]
        block.copy_(torch.softmax(block, dim=1))
    return scores


def claim_folder(config, folder, group):
    """Rank 0 (or the only process) claims the save folder; under torchrun the others learn whether it could.
    Returns (whether the folder holds a run to continue, whether that run is finished)."""
    refusal, continuing, finished = None, False, False
    if group is None or group.rank == 0:
        try:
            continuing = folder.claim(config.results_settings(), config.run.resume)
        except UserError as e:
            refusal = e
        finished = continuing and folder.is_finished()
    if group is not None:
        message, finished = group.broadcast((None if refusal is None else str(refusal), finished))
        if message and refusal is None:
            raise UserError(message)
    if refusal:
        raise refusal
    return continuing, finished


def make_summary_writer(offline, readers, started, shared, folder, metrics):
    """summary(rows, finished) for the results folder; ``shared``: under torchrun, (images each process
    extracted, seconds the shared extraction took), which is extraction, not preparation; ``metrics(rows)``:
    summary.json's metrics."""
    prepare_seconds = time.perf_counter() - started - (shared[1] if shared else 0)

    def summary(rows, finished):
        return make_summary(rows, offline, readers, started, prepare_seconds, finished,
                            skipped_before=folder.skipped_before, shared=shared, metrics=metrics(rows))
    return summary


def main(argv=None):
    """The command line: one line for the errors this program means to raise, a traceback (and error.log in the
    save folder) for any other."""
    experiment = None
    try:
        experiment = Experiment(cli.parse(argv, __doc__))
        if experiment.run() is None:
            leave_at_once()
    except ProjectError as e:
        print(f'{error_line(e)}{resume_hint(experiment)}', file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f'interrupted{resume_hint(experiment)}', file=sys.stderr)
        return 130
    except OSError as e:
        where = f' ({e.filename})' if e.filename else ''
        print(f'error: {e.strerror or e}{where}{resume_hint(experiment)}', file=sys.stderr)
        return 1
    except Exception:
        log_error(experiment)
        raise
    return 0


def leave_at_once():
    """End a torchrun process other than rank 0 once its share is in the feature cache and its process group is
    closed: nothing of it is left to write, and the interpreter's teardown with torch.distributed's threads
    about has been seen to abort ('terminate called without an active exception', about one run in a dozen in
    the tests), which torchrun reports as a failure of the whole group."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def resume_hint(experiment):
    """What a stopped run can do next: only a run with a finished batch has something to continue."""
    saved = experiment.batches_saved() if experiment is not None else 0
    if not saved:
        return ''
    return f'; {saved} finished batch(es) are saved, rerun with --resume to continue'


def log_error(experiment):
    """Write the traceback of an unexpected error to error.log in the save folder, when there is one."""
    if experiment is None or not os.path.isdir(experiment.config.run.save_dir):
        return
    with open(os.path.join(experiment.config.run.save_dir, 'error.log'), 'a') as log:
        log.write(traceback.format_exc())


if __name__ == '__main__':
    sys.exit(main())
