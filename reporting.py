"""Reporters on an experiment's loop (experiment.Experiment): each is told of the run's start, a resume, every
batch and the end, and shows it somewhere. A notebook can pass its own, or none."""
import os
import sys

from results import covariance_detail


class Reporter:
    """Does nothing at each event; a reporter overrides the events it shows."""

    def warn(self, message):
        pass

    def start(self, config, splits, plan, order_source, extractor, feature_dim, device):
        pass

    def resumed(self, first, plan):
        pass

    def batch(self, batch, batches, row):
        pass

    def finish(self, summary, plan, save_dir):
        pass


class ConsoleReporter(Reporter):
    """What the run streams and how each batch went, on standard output; warnings on standard error."""

    def warn(self, message):
        if message:
            print(f'WARNING: {message}', file=sys.stderr, flush=True)

    def start(self, config, splits, plan, order_source, extractor, feature_dim, device):
        if extractor.partial:
            self.warn(f'partial checkpoint (--allow_partial_checkpoint): {len(extractor.partial)} tensors that '
                      f'{config.network.extract_layer} depends on keep their random initialisation: '
                      f'{", ".join(extractor.partial[:6])}{" ..." if len(extractor.partial) > 6 else ""}')
        print(f'{splits.name}: {splits.num_classes} classes, {len(splits.train)} train / {len(splits.test)} test '
              f'images; streaming {plan[-1].classes_seen} classes as {[b.classes_seen for b in plan]}; class order '
              f'{order_source}')
        print(f'{config.network.arch} {config.network.extract_layer}: {feature_dim}-d features on {device} '
              f'({"bfloat16 autocast" if extractor.amp else "float32"}); {extractor.weights_report}')
        print(f'covariance: {covariance_detail(config)}; shrinkage {config.slda.shrinkage}; accuracies in percent',
              flush=True)

    def resumed(self, first, plan):
        if first:
            print(f'resuming after increment {first}/{len(plan)} ({plan[first - 1].classes_seen} classes seen)')

    def batch(self, batch, batches, row):
        slda = row['heads']['slda']
        print(f'[{batch.number}/{batches}] {batch.classes_seen:5d} classes seen | +{row["train_images"]} train '
              f'images | top-1 {slda["top1"]:6.2f}% top-5 {slda["top5"]:6.2f}% | extract '
              f'{row["extract_seconds"]:.1f}s fit {slda["fit_seconds"]:.2f}s eval {slda["eval_seconds"]:.2f}s' +
              ''.join(f' | {name} ' + ('diverged (NaN or infinite scores)' if head['diverged'] else
                                       f'{head["top1"]:.2f}%/{head["top5"]:.2f}%')
                      for name, head in row['heads'].items() if name != 'slda') +
              (' | novelty AUROC ' + ' '.join(f'{score} {value:.3f}' for score, value in
                                              row['open_set']['auroc'].items()) if 'open_set' in row else ''),
              flush=True)

    def finish(self, summary, plan, save_dir):
        skipped = len(summary['skipped_images'])
        if skipped:
            self.warn(f'--skip_bad_images: {skipped} unreadable image{"s" if skipped > 1 else ""} left out of the '
                      f'run, listed under skipped_images in {os.path.join(save_dir, "summary.json")}')
        final = summary['final']['slda']
        omega = summary['omega_all']
        omega_text = f'; Omega_all top-1 {omega["top1"]:.3f}, top-5 {omega["top5"]:.3f}' if omega else ''
        print(f'final top-1 {final["top1"]:.2f}%, top-5 {final["top5"]:.2f}% on {plan[-1].classes_seen} '
              f'classes{omega_text}; results in {save_dir}')


class LearningCurveReporter(Reporter):
    """learning_curve.png in the save folder at the end; a failure to plot is reported and never fails the run."""

    def finish(self, summary, plan, save_dir):
        import plot_results     # here: it imports matplotlib, which a run without the figure does not need
        import runs
        try:
            plot_results.plot_runs([runs.load_run(save_dir)], os.path.join(save_dir, 'learning_curve.png'))
        except Exception as e:      # noqa: BLE001 - the results are written; the figure is a convenience
            print(f'warning: learning_curve.png not written ({type(e).__name__}: {e}); the results are complete',
                  file=sys.stderr)
