"""Versioned event contracts and the topics that carry them."""

from shared.contracts.events import (
    SCHEMA_VERSION,
    CutoutFormat,
    DeadLetter,
    JobEvent,
    JobEventKind,
    JobRequested,
    ProcessingParams,
    ResultEvent,
    ResultKind,
    UploadEvent,
    UserId,
    parse_tags,
)
from shared.contracts.topics import Topic, Topics

__all__ = [
    "SCHEMA_VERSION",
    "CutoutFormat",
    "DeadLetter",
    "JobEvent",
    "JobEventKind",
    "JobRequested",
    "ProcessingParams",
    "ResultEvent",
    "ResultKind",
    "Topic",
    "Topics",
    "UploadEvent",
    "UserId",
    "parse_tags",
]
