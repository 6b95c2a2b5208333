"""cifar-mlp: fully connected image classifiers for CIFAR-10."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cifar-mlp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


class UserError(Exception):
    """A problem with the user's input or files; the CLI prints it as one line, without a traceback."""
