"""experiment.py's command line, built from the settings' declarations (config.py and the options each dataset,
ordering and output layer declares): a flag per field, with its spellings, help, choices and default.

Only the flags given reach ``config.make_config``, which fills in the rest; a flag that only other datasets,
orderings or output layers take is refused there, naming those that take it.
"""
import argparse
import dataclasses
import difflib
import typing
from importlib.metadata import version

import torch

from config import CacheSettings, DataSettings, HeadSettings, NetworkSettings, RunSettings, StreamSettings, \
    component_types, make_config
from options import SettingError

SECTIONS = {'data': [DataSettings, '--dataset'], 'network': [NetworkSettings],
            'protocol': [StreamSettings, '--ordering'], 'output layers': [HeadSettings, '--heads'],
            'running': [CacheSettings, RunSettings]}


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes (an unknown flag, a value of the wrong type) are one line, with the
    nearest flag for a misspelt one, as the settings' own errors are; no abbreviated flags."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        hints = []
        if message.startswith('unrecognized arguments'):
            for word in message.split(':', 1)[1].split():
                close = difflib.get_close_matches(word.split('=')[0], self._option_string_actions, n=1)
                if word.startswith('--') and close:
                    hints.append(f'{word}: did you mean {close[0]}?')
        self.exit(2, f'error: {message}{" (" + "; ".join(hints) + ")" if hints else ""}; --help lists every '
                     f'option\n')


class Switch(argparse.Action):
    """A bool flag: sets its field to ``const``; the two spellings of one field together are a contradiction."""

    def __call__(self, parser, namespace, values, option_string=None):
        previous = getattr(namespace, self.dest, None)
        if previous is not None and previous != self.const:
            raise SettingError(self.dest, f'{self.other} and {option_string} contradict each other; give one')
        setattr(namespace, self.dest, self.const)


def build_parser(description):
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                    argument_default=argparse.SUPPRESS)
    parser.add_argument('--version', action='version',
                        version=f'torch {torch.__version__}, torchvision {version("torchvision")}')
    seen = set()
    for title, members in SECTIONS.items():
        group = parser.add_argument_group(title)
        for member in members:
            types = [member] if isinstance(member, type) else \
                [options for chooser, _, options in component_types() if chooser == member]
            for settings_type in types:
                for field in dataclasses.fields(settings_type):
                    if field.name not in seen and 'help' in field.metadata:
                        seen.add(field.name)
                        add_flag(group, field)
    return parser


def add_flag(group, field):
    meta = field.metadata
    flags = meta['flags'] or (f'--{field.name}',)
    # the setting's own name (config.json, make_config) where the flag spells it otherwise
    named = '' if flags[0] == f'--{field.name}' else f' [setting {field.name}]'
    if isinstance(field.default, bool):
        default = f' (default: {"on" if field.default else "off"})' if meta['off_flags'] and \
            'default:' not in meta['help'] else ''
        helps = {True: meta['help'] + default + named, False: f'the opposite of {flags[0]}'}
        for spellings, value in ((flags, True), (meta['off_flags'], False)):
            if spellings:
                action = group.add_argument(*spellings, dest=field.name, action=Switch, nargs=0, const=value,
                                            help=helps[value].replace('%', '%%'))
                action.other = (meta['off_flags'] or flags)[0] if value else flags[0]
        return
    default = '' if field.default is None or 'default:' in meta['help'] else f' (default: {field.default})'
    if isinstance(field.default, tuple):
        default = f' (default: {",".join(field.default)})'
    parse = meta['parse'] or (type(field.default) if field.default is not None else
                              next(t for t in typing.get_args(field.type) if t is not type(None)))
    group.add_argument(*flags, dest=field.name, type=parse, choices=meta['choices'], metavar=meta['metavar'],
                       help=(meta['help'] + default + named).replace('%', '%%'))


def parse(argv=None, description=None):
    """The Config of a command line (``argv``, default sys.argv[1:])."""
    given = vars(build_parser(description).parse_args(argv))
    return make_config(**given)

