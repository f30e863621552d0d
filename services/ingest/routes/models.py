"""``GET /v1/models``: the models this deployment serves, each with its licence (shared/models.py)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from services.ingest.auth import CurrentUser, Resources
from services.ingest.errors import ERROR_RESPONSES

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)


class ModelView(BaseModel):
    name: str
    default: bool
    hub_id: str | None
    licence: str
    # Whether the weights' licence allows commercial use without a separate agreement.
    commercial_use: bool
    note: str


class ModelList(BaseModel):
    default: str
    items: list[ModelView]


@router.get("/v1/models", response_model=ModelList)
async def list_models(res: Resources, principal: CurrentUser) -> ModelList:
    """The served models and the default; a job names one in its ``model`` form field (POST /v1/jobs)."""
    models = res.settings.models
    return ModelList(default=models.default_model, items=[ModelView.model_validate(m) for m in models.listing()])
