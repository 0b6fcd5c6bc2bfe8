"""xplstm: one LSTM, written once against the Python array API, on NumPy, CuPy and more."""

from xplstm import backends
from xplstm.lstm import LSTM, Weights
from xplstm.resolver import resolve, to_numpy

__version__ = "0.1.0"

__all__ = ["LSTM", "Weights", "__version__", "backends", "resolve", "to_numpy"]
