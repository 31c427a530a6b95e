"""Run folders of experiment.py, read into one normalised record (Run) whichever release wrote them, and the
writing of what is made from them (figures, tables).

Three layouts of config.json and summary.json are read:
  fractions   config.json {"arguments": {...}, ...}, perhaps without "ordering" and "covariance" (then
              class_incremental, and plastic or fixed from --streaming_update_sigma); summary.json without
              "accuracy_unit": accuracies are fractions in [0, 1] (releases before accuracies became percent)
  arguments   the same with "accuracy_unit": "percent", other output layers' accuracies in each increment's "heads"
  schema 2    "schema_version": 2 in both: config.json gives "results_settings", summary.json each head's
              accuracies per increment (SLDA's among them) and "final"

results_settings, the settings that change results (runs are grouped by them), are named as the layout names them:
  fractions, arguments   experiment.py's argument names (shrinkage, class_increment, images_dir, seed, ...), every
                         argument but RESULT_FREE_ARGUMENTS; feature_cache becomes whether features were cached
                         (true or false): where the cache lives changes nothing
  schema 2               config.json's "results_settings" as written ("slda.shrinkage", "run.seed", ...)
"""
import dataclasses
import json
import os
from dataclasses import dataclass

# Arguments of the 'fractions' and 'arguments' layouts that change no result (as results.ARGS_FREE_TO_CHANGE was
# when those releases wrote them; kept here because those folders do not change when experiment.py does).
RESULT_FREE_ARGUMENTS = frozenset({'resume', 'num_workers', 'progress', 'save_dir', 'expt_name', 'skip_bad_images',
                                   'save_preds', 'cache_check', 'plot', 'dist_timeout'})

# Accuracies in summary.json are multiplied by this for percent, by its "accuracy_unit" (None: not given).
PERCENT_PER_UNIT = {None: 100, 'percent': 1}


@dataclass(frozen=True)
class Run:
    """One run folder. Accuracies are in percent; a batch is one increment of the stream.

    name          the experiment name (expt_name, else the folder's name); folder: as given to load_run
    dataset, ordering, covariance ('plastic' or 'fixed'); finished: whether the run completed its stream
    heads         the output layers' names, 'slda' first
    top1, top5    {head: (accuracy after each batch, percent)}
    classes_seen, train_images_seen, batch_numbers    per batch: x values (classes, training images, 1, 2, ...)
    final_top1, final_top5    {head: final accuracy, percent}; empty until the run has finished
    average_incremental    {head: {'top1', 'top5'}}: the mean over batches of the accuracies so far (percent), the
                  average incremental accuracy of metrics.py, from the curves (so for runs of every release)
    accuracy_matrix    {head: the accuracy matrix, T lists of T values (percent, None where undefined)}, and
    forgetting, backward_transfer    {head: percentage points, or None where undefined}: from summary.json's
                  "metrics" (metrics.py), for the heads where it is defined (none in runs of releases before it)
    omega_all     {'top1', 'top5'}: SLDA's mean accuracy ratio to the offline accuracies given, or None
    omega_vs_offline    {head: {'top1', 'top5'}} ratios to the run's offline head, or None; a ratio is None
                  where the offline head scored 0% on some batch
    images_per_second   feature extraction speed (images/s), or None; wall_seconds: the last process's wall time
                  (seconds), or None
    results_settings    {name: value} of every setting that changes results (names: see the module's docstring)
    seeds         {name: value} of the results settings that seed a random choice and are set
    schema_version      2 for folders of this release, 1 for earlier layouts
    novelty_auroc {score: AUROC after each batch} of --ood_classes runs (open_set.py: 'mahalanobis', 'msp'); empty
                  for others
    """
    name: str
    folder: str
    dataset: str
    ordering: str
    covariance: str
    finished: bool
    heads: tuple
    top1: dict
    top5: dict
    classes_seen: tuple
    train_images_seen: tuple
    batch_numbers: tuple
    final_top1: dict
    final_top5: dict
    average_incremental: dict
    accuracy_matrix: dict
    forgetting: dict
    backward_transfer: dict
    omega_all: dict | None
    omega_vs_offline: dict | None
    images_per_second: float | None
    wall_seconds: float | None
    results_settings: dict
    seeds: dict
    schema_version: int = 1     # of config.json: 2 for this release, 1 for the layouts before it
    novelty_auroc: dict = dataclasses.field(default_factory=dict)

    def setting(self, field):
        """The results setting named ``field`` in any layout ('class_increment' finds "stream.class_increment"
        too), or None."""
        return next((value for name, value in self.results_settings.items()
                     if name == field or name.endswith('.' + field)), None)


def load_run(folder):
    """The Run of ``folder``. A ValueError names the folder and what is missing or wrong when it is not a run
    folder of experiment.py, or holds a value that is no accuracy (NaN, say). A run of this release stopped before
    its first batch finished (config.json, no summary.json yet) is an unfinished run with no batch."""
    if not os.path.isdir(folder):
        raise ValueError(f'{folder} is not a run folder of experiment.py: no such folder')
    config = read_json(folder, 'config.json')
    version = config.get('schema_version', 1)       # the layouts before schema 2 have no version
    if version == 2 and not os.path.exists(os.path.join(folder, 'summary.json')):
        summary = {'finished': False, 'accuracy_unit': 'percent', 'increments': [], 'final': {}}
    else:
        summary = read_json(folder, 'summary.json')
    if version not in (1, 2):
        raise ValueError(f'{folder}: config.json has schema_version {version!r}; this reader knows 1 and 2')
    try:
        layout = schema_2 if version == 2 else arguments_layout
        return dataclasses.replace(normalise(folder, summary, **layout(folder, config, summary)),
                                   schema_version=version)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f'{folder}: config.json or summary.json is not as experiment.py writes it (missing or '
                         f'wrong: {e})') from None


def read_json(folder, name):
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f'{folder} is not a run folder of experiment.py: it has no {name}') from None
    except (OSError, ValueError) as e:
        raise ValueError(f'{folder}: cannot read {name} ({e})') from None
    if not isinstance(value, dict):
        raise ValueError(f'{folder}: {name} is not a JSON object')
    return value


def arguments_layout(folder, config, summary):
    """The parts of a run of the 'fractions' and 'arguments' layouts that normalise() completes."""
    arguments = config['arguments']
    settings = {name: value for name, value in arguments.items() if name not in RESULT_FREE_ARGUMENTS}
    if 'feature_cache' in settings:
        settings['feature_cache'] = settings['feature_cache'] is not None
    rows = summary['increments']
    final = {'slda': {'top1': summary['final_top1'], 'top5': summary['final_top5']}}
    final.update((head, rows[-1]['heads'][head]) for head in (rows[-1].get('heads', {}) if rows else {}))
    return {'name': arguments.get('expt_name') or os.path.basename(os.path.normpath(folder)),
            'dataset': arguments['dataset'],
            'ordering': config.get('ordering') or arguments.get('ordering') or 'class_incremental',
            'covariance': config.get('covariance') or {True: 'plastic', False: 'fixed'}[
                arguments['streaming_update_sigma']],
            'unit': summary.get('accuracy_unit'), 'results_settings': settings,
            'accuracies': [{'slda': row, **row.get('heads', {})} for row in rows], 'final': final}


def schema_2(folder, config, summary):
    """The parts of a run of schema version 2 that normalise() completes."""
    return {'name': config.get('expt_name') or os.path.basename(os.path.normpath(folder)),
            'dataset': config['dataset'], 'ordering': config['ordering'], 'covariance': config['covariance'],
            'unit': summary['accuracy_unit'], 'results_settings': dict(config['results_settings']),
            'accuracies': [row['heads'] for row in summary['increments']], 'final': summary['final']}


def normalise(folder, summary, name, dataset, ordering, covariance, unit, results_settings, accuracies, final):
    """The Run from a layout's parts: ``accuracies``, {head: {'top1', 'top5'}} per batch, and ``final``, per head,
    in ``unit``."""
    if unit not in PERCENT_PER_UNIT:
        raise ValueError(f'{folder}: summary.json gives accuracies in {unit!r}, not percent or fractions')
    scale = PERCENT_PER_UNIT[unit]
    heads = sorted(accuracies[0] if accuracies else ['slda'], key=lambda head: head != 'slda')

    def curve(head, key):
        return tuple(percent(folder, row[head][key], scale, f'{head} {key} after batch {i}')
                     for i, row in enumerate(accuracies, 1))

    def finals(key):
        return {head: percent(folder, final[head][key], scale, f'final {head} {key}')
                for head in heads} if summary['finished'] else {}

    rows = summary['increments']
    seen = [sum(row['train_images'] for row in rows[:i]) for i in range(1, len(rows) + 1)]
    top1, top5 = ({head: curve(head, key) for head in heads} for key in ('top1', 'top5'))
    metrics = summary.get('metrics') or {}

    def metric(name):
        return {head: values[name] for head, values in metrics.items() if values.get(name) is not None}
    return Run(name=name, folder=folder, dataset=dataset, ordering=ordering, covariance=covariance,
               finished=bool(summary['finished']), heads=tuple(heads),
               top1=top1, top5=top5,
               classes_seen=tuple(row['classes_seen'] for row in rows), train_images_seen=tuple(seen),
               batch_numbers=tuple(range(1, len(rows) + 1)), final_top1=finals('top1'), final_top5=finals('top5'),
               average_incremental={head: {'top1': sum(top1[head]) / len(rows), 'top5': sum(top5[head]) / len(rows)}
                                    for head in heads} if rows else {},
               accuracy_matrix=metric('accuracy_matrix'), forgetting=metric('average_forgetting'),
               backward_transfer=metric('backward_transfer'),
               omega_all=summary.get('omega_all'), omega_vs_offline=summary.get('omega_vs_offline'),
               images_per_second=summary.get('images_per_second'),
               wall_seconds=summary.get('seconds', {}).get('total_this_process'),
               results_settings=results_settings,
               novelty_auroc={score: tuple(row['open_set']['auroc'][score] for row in rows)
                              for score in (rows[0]['open_set']['auroc'] if rows and 'open_set' in rows[0] else ())},
               seeds={name: value for name, value in results_settings.items() if is_seed(name) and value is not None})


def percent(folder, value, scale, what):
    """``value`` in percent; a ValueError naming ``folder`` and ``what`` when it is not an accuracy."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value * scale <= 100:
        raise ValueError(f'{folder}: summary.json gives {what} as {value!r}, not an accuracy '
                         f'({"percent" if scale == 1 else "a fraction"})')
    return value * scale


def is_seed(name):
    """Whether the results setting ``name`` seeds a random choice (seed, class_order_seed, stream.ordering_seed)."""
    field = name.rpartition('.')[2]
    return field == 'seed' or field.endswith('_seed')


def write_output(path, save, *args):
    """``save(path, *args)`` (utils.save_text, or utils.atomic_write), making missing folders above ``path``; a
    failure is raised as a ValueError naming ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        save(path, *args)
    except FileExistsError:         # from makedirs: a file stands where the folder should
        raise ValueError(f'cannot write {path}: {folder} is a file, not a folder') from None
    except OSError as e:
        raise ValueError(f'cannot write {path}: {e.strerror or e}') from None
