"""batchserve: an inference web service for trained PyTorch MLP and RNN models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchserve")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
