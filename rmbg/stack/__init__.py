"""The embedded stack: SeaweedFS (S3), Tansu (Kafka API), PostgreSQL and Redis for `rmbg up` and tests."""

from rmbg.stack.processes import StackError
from rmbg.stack.stack import EmbeddedStack, StackEndpoints

__all__ = ["EmbeddedStack", "StackEndpoints", "StackError"]
