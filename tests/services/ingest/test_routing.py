"""Several models served: each job's request lands on its model's own jobs topic, read by that model's pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rmbg.demo import sample_bytes
from services.ingest.intake import ModelNotServed
from services.ingest.resources import IngestResources, open_ingest
from services.ingest.settings import IngestOptions, IngestSettings
from shared.contracts import ProcessingParams
from shared.messaging import ensure_topics
from shared.models import ModelEntry, ModelSettings
from shared.telemetry import PipelineMetrics
from tests.support.kafka import read_topic

pytestmark = pytest.mark.slow

EXTRA = {name: ModelEntry(licence="test weights", commercial_use=False) for name in ("tiny-a", "tiny-b")}
MODELS = ModelSettings(served=("tiny-a", "tiny-b"), default="tiny-a", extra=EXTRA)


@pytest.fixture(scope="module")
async def routed(service_common: dict[str, object]) -> AsyncIterator[IngestResources]:
    settings = IngestSettings(**{**service_common, "models": MODELS}, ingest=IngestOptions(port=0))  # type: ignore[arg-type]
    created = await ensure_topics(settings.kafka, settings.topics, settings.models)
    assert {f"{settings.topics.jobs}.tiny-a", f"{settings.topics.jobs}.tiny-b"} <= set(created)
    async with open_ingest(settings, PipelineMetrics.create()) as res:
        yield res


def test_routing_names_are_plain_for_one_model_and_per_model_for_several() -> None:
    one = ModelSettings()
    assert one.jobs_topic("rmbg.jobs.v1", "rmbg-2.0") == "rmbg.jobs.v1"
    assert one.inference_group("rmbg-inference", "rmbg-2.0") == "rmbg-inference"
    several = ModelSettings(served=("rmbg-2.0", "birefnet"))
    assert several.jobs_topic("rmbg.jobs.v1", "birefnet") == "rmbg.jobs.v1.birefnet"
    assert several.jobs_topic("rmbg.jobs.v1", "briaai/RMBG-2.0") == "rmbg.jobs.v1.rmbg-2.0", "older rows' hub ids"
    assert several.inference_group("rmbg-inference", "rmbg-2.0") == "rmbg-inference.rmbg-2.0"
    assert several.served_name("birefnet-lite") is None and several.served_name("nope") is None


async def test_each_job_goes_to_its_models_topic(routed: IngestResources) -> None:
    data = sample_bytes("coffee.png")
    accepted = {}
    for model in ("tiny-a", "tiny-b", None):
        # Distinct bytes per job are not needed: each is its own job, its request on its model's topic.
        got = await routed.intake.accept(
            data=data, user_id="router", tags=[], params=ProcessingParams(), source="http", model=model
        )
        accepted[model] = got.job_id
    base = routed.settings.topics.jobs
    topics = routed.topics
    for model, wanted in (("tiny-a", {accepted["tiny-a"], accepted[None]}), ("tiny-b", {accepted["tiny-b"]})):
        name = topics.jobs_for(model).name
        assert name == f"{base}.{model}"
        records = await read_topic(
            routed.settings.kafka,
            name,
            lambda rs, w=wanted: w <= {topics.jobs.deserialize(r.value).job_id for r in rs},  # type: ignore[misc]
        )
        jobs = [topics.jobs.deserialize(r.value) for r in records]
        assert {j.job_id for j in jobs} == wanted and {j.model for j in jobs} == {model}
    with pytest.raises(ModelNotServed, match="tiny-a, tiny-b"):
        await routed.intake.accept(
            data=data, user_id="router", tags=[], params=ProcessingParams(), source="http", model="birefnet"
        )
