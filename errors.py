"""The errors this program means to raise. The command line (experiment.main) prints each in one line; any
other exception is a bug and keeps its traceback. Each also derives from the built-in type that says what is
wrong, so that code catching ValueError or FileNotFoundError, as scikit-learn users do, still works."""


class ProjectError(Exception):
    """Base of every error this program means to raise; ``hint`` says what to do about it (printed after the
    message) and ``exit_code`` is the command line's."""
    hint = ''
    exit_code = 2


def error_line(error):
    """The command line's one line for a ProjectError: 'error: <message> (<hint>)'."""
    return f'error: {error}{f" ({error.hint})" if error.hint else ""}'


class InputError(ProjectError, ValueError):
    """A file, folder or argument whose content cannot be used; the message names it."""


class MissingFileError(ProjectError, FileNotFoundError):
    """A file or folder that should exist and does not; the message names it."""
