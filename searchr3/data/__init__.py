"""Data sources: BEIR-format retrieval datasets (:mod:`searchr3.data.beir`, re-exported here)."""

from searchr3.data.beir import *  # noqa: F403
from searchr3.data.beir import __all__  # noqa: F401
