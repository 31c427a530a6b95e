"""What changed between two versions of the stored reference outputs (tests/reference/outputs.json), to check a
regeneration before committing it: every output file compared by value hash, and the accuracies summary.json
reports listed per batch where they moved.

    .venv/bin/python tests/reference/compare_regenerated.py [OLD [NEW]]

OLD is a file or a git revision whose tests/reference/outputs.json is read (default HEAD, the committed one); NEW
a file (default the working tree's). Exits 1 when anything but the accuracies changed (predictions, models,
label files, image counts, the set of runs or files, the platform), else 0.
"""
import json
import subprocess
import sys
from pathlib import Path

REFERENCE_FILE = Path(__file__).resolve().parent / 'outputs.json'
# Files whose values a change of the metric may move: the original's accuracies lists.
ACCURACY_FILES = 'accuracies_'


def load(source):
    """outputs.json's content from a file path or a git revision."""
    if Path(source).is_file():
        return json.loads(Path(source).read_text())
    relative = REFERENCE_FILE.relative_to(REFERENCE_FILE.parents[2]).as_posix()
    text = subprocess.run(['git', 'show', f'{source}:{relative}'], cwd=REFERENCE_FILE.parents[2], check=True,
                          capture_output=True, text=True).stdout
    return json.loads(text)


def compare(old, new):
    """(lines to print, whether anything but accuracies changed)."""
    lines, other_changes = [], False
    if old['platform'] != new['platform']:
        lines.append(f'platform: {old["platform"]} -> {new["platform"]}')
        other_changes = True
    if sorted(old['runs']) != sorted(new['runs']):
        lines.append(f'runs: {sorted(old["runs"])} -> {sorted(new["runs"])}')
        return lines, True
    for run, old_files in old['runs'].items():
        new_files = new['runs'][run]
        if sorted(old_files) != sorted(new_files):
            lines.append(f'{run}: files {sorted(old_files)} -> {sorted(new_files)}')
            other_changes = True
            continue
        same, moved = [], []
        for name in sorted(old_files):
            if name == 'summary.json':
                continue
            for key, description in old_files[name].items():
                label = f'{name}{":" + key if key else ""}'
                (same if description == new_files[name][key] else moved).append(label)
        changed_outputs = [label for label in moved if not label.startswith(ACCURACY_FILES)]
        other_changes |= bool(changed_outputs)
        lines.append(f'{run}: {len(same)} tensors bit-identical (sha256, dtype, shape), {len(moved)} changed'
                     + (f'; NOT ACCURACIES: {", ".join(changed_outputs)}' if changed_outputs else ''))
        lines += [f'  changed: {label}' for label in moved]
        old_summary, new_summary = old_files['summary.json'], new_files['summary.json']
        for counts in ('train_images', 'test_images'):
            if old_summary[counts] != new_summary[counts]:
                lines.append(f'  summary.json {counts}: {old_summary[counts]} -> {new_summary[counts]}')
                other_changes = True
        for batch, (was, now) in enumerate(zip(old_summary['accuracies'], new_summary['accuracies']), start=1):
            for measure, a, b in zip(('top-1', 'top-5'), was, now):
                if a != b:
                    lines.append(f'  batch {batch} {measure}: {a:.4f} -> {b:.4f} ({b - a:+.4f} points)')
    return lines, other_changes


def main(argv):
    old = load(argv[0] if argv else 'HEAD')
    new = load(argv[1] if len(argv) > 1 else REFERENCE_FILE)
    lines, other_changes = compare(old, new)
    print('\n'.join(lines))
    print('something besides accuracies changed' if other_changes else
          'predictions, models, label files and image counts are bit-identical; accuracies changed only as listed')
    return 1 if other_changes else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
