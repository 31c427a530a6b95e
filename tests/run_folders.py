"""Run folders for the tests of runs.py, plot_results.py and summarize_runs.py: copies of the folders stored under
tests/fixtures (written by experiment.py of two releases, config.json, summary.json and accuracies_*.json only),
edited where a test needs another setting or value, and a folder of the coming layout (schema version 2) written
by hand from the stored one."""
import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / 'fixtures'
# --num_classes 4 --class_increment 2 on the digits, by the release before commit 8732148: accuracies as fractions,
# no "accuracy_unit", no "ordering" or "covariance" in config.json.
FRACTIONS = FIXTURES / 'run_fraction_layout'
# The same by commit bc0c185 with --heads slda,ncm --offline_accuracies: percent, per-head rows, Omega_all.
ARGUMENTS = FIXTURES / 'run_arguments_layout'

# experiment.py's arguments that change no result, as the brief of runs.py lists them.
FREE_ARGUMENTS = {'resume', 'num_workers', 'progress', 'save_dir', 'expt_name', 'skip_bad_images', 'save_preds',
                  'cache_check', 'plot', 'dist_timeout'}


def read(folder, name):
    return json.loads((Path(folder) / name).read_text())


def write(folder, name, value):
    (Path(folder) / name).write_text(json.dumps(value, indent=2))


def copy_run(source, destination, config=None, summary=None):
    """Copy the run folder ``source`` to ``destination`` (made with its parents); ``config`` and ``summary``,
    functions changing the parsed config.json and summary.json in place, edit the copy. Returns ``destination``
    as a string."""
    shutil.copytree(source, destination)
    for name, edit in (('config.json', config), ('summary.json', summary)):
        if edit is not None:
            value = read(destination, name)
            edit(value)
            write(destination, name, value)
    return str(destination)


def arguments(**changes):
    """A config.json edit setting experiment.py's ``arguments``."""
    return lambda config: config['arguments'].update(changes)


def unfinished(summary):
    """A summary.json edit: the run stopped after its first batch."""
    summary.update(finished=False, increments=summary['increments'][:1])


SCHEMA_2_SETTINGS = {'data': {'dataset': 'digits', 'images_dir': None, 'num_classes': 4},
                     'stream': {'ordering': 'class_incremental', 'class_increment': 2, 'ordering_seed': None},
                     'slda': {'shrinkage': 1e-4, 'streaming_update_sigma': True},
                     'run': {'seed': 0, 'num_workers': 0, 'save_dir': 'schema_2'}}


def schema_2(destination, seed=0):
    """Write the stored percent run (ARGUMENTS) as schema version 2 describes it, by hand, into ``destination``,
    with "run.seed" ``seed``; returns (folder as a string, config, summary)."""
    old_config, old = read(ARGUMENTS, 'config.json'), read(ARGUMENTS, 'summary.json')
    settings = json.loads(json.dumps(SCHEMA_2_SETTINGS))
    settings['run']['seed'] = seed
    results_settings = {f'{group}.{field}': value for group, fields in settings.items() for field, value in
                        fields.items() if field not in ('num_workers', 'save_dir')}
    config = {'schema_version': 2, 'expt_name': 'schema_2', 'dataset': 'digits', 'ordering': 'class_incremental',
              'covariance': 'plastic', 'heads': ['slda', 'ncm'], 'results_settings': results_settings,
              'settings': settings, 'class_order': old_config['class_order'], 'feature_dim': 512}
    increments = [{'classes_seen': row['classes_seen'], 'train_images': row['train_images'],
                   'test_images': row['test_images'],
                   'heads': {'slda': {'top1': row['top1'], 'top5': row['top5']}, 'ncm': row['heads']['ncm']},
                   **{key: row[key] for key in ('extract_seconds', 'fit_seconds', 'eval_seconds')}}
                  for row in old['increments']]
    summary = {'schema_version': 2, 'finished': True, 'accuracy_unit': 'percent', 'increments': increments,
               'final': {head: {key: value[key] for key in ('top1', 'top5')}
                         for head, value in increments[-1]['heads'].items()},
               'omega_all': old['omega_all'], 'omega_vs_offline': None, 'seconds': old['seconds'],
               'images_per_second': old['images_per_second'], 'skipped_images': []}
    Path(destination).mkdir(parents=True)
    write(destination, 'config.json', config)
    write(destination, 'summary.json', summary)
    return str(destination), config, summary


def table_rows(text):
    """The cells of each body row of the Markdown table in ``text`` (its lines after the header and rule)."""
    lines = [line for line in text.splitlines() if line.startswith('|')]
    return [[cell.strip() for cell in line.strip().strip('|').split('|')] for line in lines[2:]]
