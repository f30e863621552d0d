"""Topics own their serializers: a message is validated when it is made and again where it enters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from shared.config import KafkaSettings, TopicSettings
from shared.contracts.events import DeadLetter, JobEvent, JobRequested, ResultEvent, UploadEvent
from shared.exceptions import ContractError
from shared.models import ModelSettings

M = TypeVar("M", bound=BaseModel)

SCHEMA_HEADER = "rmbg-schema"


@dataclass(frozen=True)
class Topic(Generic[M]):
    name: str
    model: type[M]
    max_message_bytes: int

    def serialize(self, message: M) -> bytes:
        data = message.model_dump_json().encode()
        if len(data) > self.max_message_bytes:
            raise ContractError(
                f"{self.model.__name__} of {len(data)} bytes exceeds {self.max_message_bytes} on {self.name}"
            )
        return data

    def deserialize(self, data: bytes | None) -> M:
        if data is None:
            raise ContractError(f"empty record on {self.name}")
        if len(data) > self.max_message_bytes:
            raise ContractError(f"record of {len(data)} bytes exceeds {self.max_message_bytes} on {self.name}")
        try:
            return self.model.model_validate_json(data)
        except ValidationError as exc:
            # Keep the reason short and free of the payload: it goes into logs and dead letters.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
            )
            raise ContractError(f"malformed {self.model.__name__} on {self.name}: {problems}") from None

    def headers(self) -> list[tuple[str, bytes]]:
        return [(SCHEMA_HEADER, f"{self.model.__name__}/1".encode()), ("content-type", b"application/json")]


@dataclass(frozen=True)
class Topics:
    uploads: Topic[UploadEvent]
    jobs: Topic[JobRequested]
    results: Topic[ResultEvent]
    job_events: Topic[JobEvent]
    dead_letter: Topic[DeadLetter]
    # Which models are served, for routing each model's jobs to its own pool (ModelSettings.jobs_topic).
    models: ModelSettings = field(default_factory=ModelSettings)

    def jobs_for(self, model: str) -> Topic[JobRequested]:
        """The jobs topic of ``model``'s inference pool: ``jobs`` itself when one model is served."""
        name = self.models.jobs_topic(self.jobs.name, model)
        return self.jobs if name == self.jobs.name else Topic(name, JobRequested, self.jobs.max_message_bytes)

    def all_jobs(self) -> list[Topic[JobRequested]]:
        """Every served model's jobs topic (just ``jobs`` when one model is served)."""
        return [self.jobs_for(model) for model in self.models.served]

    @classmethod
    def from_settings(
        cls, topics: TopicSettings, kafka: KafkaSettings, models: ModelSettings | None = None
    ) -> Topics:
        limit = kafka.max_message_bytes
        return cls(
            uploads=Topic(topics.uploads, UploadEvent, limit),
            jobs=Topic(topics.jobs, JobRequested, limit),
            results=Topic(topics.results, ResultEvent, limit),
            job_events=Topic(topics.job_events, JobEvent, limit),
            dead_letter=Topic(topics.dead_letter, DeadLetter, limit),
            models=models or ModelSettings(),
        )
