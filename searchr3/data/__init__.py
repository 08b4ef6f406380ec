"""Data sources: BEIR-format retrieval datasets."""

from searchr3.data.beir import (
    BeirDataset,
    DataError,
    UnknownDocumentWarning,
    available_splits,
    doc_text,
    judged_queries,
    load_beir,
)

__all__ = [
    "BeirDataset",
    "DataError",
    "UnknownDocumentWarning",
    "available_splits",
    "doc_text",
    "judged_queries",
    "load_beir",
]
