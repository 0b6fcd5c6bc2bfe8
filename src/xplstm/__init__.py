"""xplstm: one LSTM, written once against the Python array API, on NumPy, CuPy and more."""

from xplstm import backends, checkpoint, losses, optim
from xplstm.embedding import Embedding
from xplstm.layer import Weights
from xplstm.linear import Linear
from xplstm.lstm import LSTM
from xplstm.resolver import resolve, to_numpy
from xplstm.sequential import LastStep, Sequential

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "Embedding",
    "LastStep",
    "Linear",
    "Sequential",
    "Weights",
    "__version__",
    "backends",
    "checkpoint",
    "losses",
    "optim",
    "resolve",
    "to_numpy",
]
