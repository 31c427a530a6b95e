"""How a setting is declared, once: a field of a frozen ``Settings`` dataclass whose metadata holds its help, the
flag spellings that set it, its check, and whether it changes results.

Everything else is derived from these declarations: the command line (cli.py), validation (``Settings`` checks
every field when built, in one place), what ``--resume`` compares and what config.json records (config.py).
A component (a dataset, an ordering, an output layer) declares its own options as a ``Settings`` subclass.
"""
import dataclasses
import math

from errors import InputError


class SettingError(InputError):
    """A setting with a value it cannot have; ``setting`` is the field's name."""

    def __init__(self, setting, message):
        super().__init__(message)
        self.setting = setting


def option(default, help, *, flags=None, off_flags=(), parse=None, metavar=None, choices=None, check=None,
           changes_results=True):
    """A settings field. ``flags``: the spellings that set it (default ``--<field name>``); for a bool,
    ``off_flags`` set it False. ``parse`` turns the command line's text into the value (default: the type of
    ``default``, str when None). ``check(value)`` returns why a value is refused, or None. ``changes_results``:
    True, False, or a function of the value giving what ``--resume`` compares."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, flags=flags, off_flags=off_flags, parse=parse, metavar=metavar, choices=choices, check=check,
        changes_results=changes_results))


def flag_of(field):
    """The first command-line spelling of ``field`` (a dataclasses.Field)."""
    return (field.metadata['flags'] or (f'--{field.name}',))[0]


def described(field):
    """How messages name a setting: its flag, and its field name where the two differ."""
    flag = flag_of(field)
    return flag if flag == f'--{field.name}' else f'{field.name} ({flag})'


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings group: each field is checked when the object is built."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            reason = check_value(field, value)
            if reason:
                raise SettingError(field.name, f'{described(field)} {reason}, got {value!r}')


def check_value(field, value):
    """Why ``value`` cannot be ``field``'s, or None."""
    choices = field.metadata.get('choices')
    if isinstance(field.default, bool) and not isinstance(value, bool):
        return 'must be True or False'
    if choices is not None and value not in choices:
        return f'must be one of {", ".join(map(str, choices))}'
    check = field.metadata.get('check')
    return check(value) if check else None


def whole_number(value):
    return isinstance(value, int) and not isinstance(value, bool)


def at_least(least):
    """A check: a whole number >= ``least``."""
    def check(value):
        if not whole_number(value) or value < least:
            return f'must be a whole number of at least {least}'
        return None
    return check


def seed(value):
    """A check: a seed NumPy and torch both take."""
    if not whole_number(value) or not 0 <= value < 2 ** 32:
        return 'must be a whole number in [0, 2**32)'
    return None


def fraction(value):
    """A check: a finite number in [0, 1]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        return 'must be a number in [0, 1]'
    return None


def positive(value):
    """A check: a finite number > 0 (NaN and infinity refused)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        return 'must be a finite number above 0'
    return None


def comma_list(text):
    """Parses a comma-separated list of names into a tuple."""
    return tuple(name.strip() for name in text.split(','))


def fields_of(settings_type):
    """{field name: dataclasses.Field} of a Settings subclass, in declaration order."""
    return {field.name: field for field in dataclasses.fields(settings_type)}


def results_settings(settings, prefix=''):
    """{dotted name: value} of every field of ``settings`` (nested Settings included) that changes results, for
    ``--resume`` to compare and summaries to group by."""
    out = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, Settings):
            out.update(results_settings(value, f'{prefix}{field.name}.'))
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                out.update(results_settings(item, f'{prefix}{field.name}.{key}.'))
            continue
        changes = field.metadata.get('changes_results', True)
        if changes:
            out[prefix + field.name] = changes(value) if callable(changes) else value
    return out


def as_dict(settings):
    """Plain data (JSON-ready) of ``settings``: nested groups become dicts, tuples lists."""
    out = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, Settings):
            value = {'type': type(value).__name__, **as_dict(value)}
        elif isinstance(value, dict):
            value = {key: as_dict(item) for key, item in value.items()}
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out
