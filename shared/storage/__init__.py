"""Object storage: content-addressed keys and an S3 client that speaks only the S3 protocol."""

from shared.storage.keys import ObjectKeys
from shared.storage.objects import ObjectStore, S3Counters, open_object_store

__all__ = ["ObjectKeys", "ObjectStore", "S3Counters", "open_object_store"]
