"""Segmentation backends: RMBG-2.0 through transformers, and a weights-free GrabCut fallback for demos."""

from services.inference.backends.base import Matte, SegmentationBackend
from services.inference.backends.classic import ClassicBackend
from services.inference.backends.factory import BackendKind, load_backend
from services.inference.backends.rmbg import RmbgBackend

__all__ = ["BackendKind", "ClassicBackend", "Matte", "RmbgBackend", "SegmentationBackend", "load_backend"]
