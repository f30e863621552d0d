"""The model catalogue and the settings that choose what a deployment serves (shared/models.py)."""

from __future__ import annotations

import json

import pytest

from services.inference.settings import InferenceOptions, InferenceSettings
from services.ingest.settings import IngestOptions, IngestSettings
from shared.exceptions import ConfigError
from shared.models import CATALOGUE, ModelEntry, ModelSettings

TINY = {"tiny": ModelEntry(licence="test weights", commercial_use=False)}


def test_the_catalogue_says_which_models_allow_commercial_use() -> None:
    assert CATALOGUE["rmbg-2.0"].hub_id == "briaai/RMBG-2.0"
    assert CATALOGUE["rmbg-2.0"].licence == "CC BY-NC 4.0" and CATALOGUE["rmbg-2.0"].commercial_use is False
    for name in ("birefnet", "birefnet-lite"):
        assert CATALOGUE[name].licence == "MIT" and CATALOGUE[name].commercial_use is True
        assert str(CATALOGUE[name].hub_id).startswith("ZhengPeng7/")
    assert "tiny-rmbg-test" not in CATALOGUE, "the test model joins through settings only"


def test_the_default_deployment_serves_rmbg_2_0_alone() -> None:
    models = ModelSettings()
    assert models.served == ("rmbg-2.0",) and models.default == "rmbg-2.0"


def test_served_and_default_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMBG_MODELS__SERVED", "rmbg-2.0, birefnet")
    monkeypatch.setenv("RMBG_MODELS__DEFAULT", "birefnet")
    models = IngestSettings().models
    assert models.served == ("rmbg-2.0", "birefnet") and models.default == "birefnet"
    assert [(m["name"], m["default"], m["commercial_use"]) for m in models.listing()] == [
        ("rmbg-2.0", False, False),
        ("birefnet", True, True),
    ]
    monkeypatch.setenv("RMBG_MODELS__EXTRA", json.dumps({"tiny": {"licence": "test", "commercial_use": False}}))
    monkeypatch.setenv("RMBG_MODELS__SERVED", "tiny")
    monkeypatch.delenv("RMBG_MODELS__DEFAULT")
    assert IngestSettings().models.default == "tiny"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"served": ("nope",)}, "unknown model 'nope'"),
        ({"served": ()}, "names no model"),
        ({"served": ("rmbg-2.0",), "default": "birefnet"}, "is not served"),
        ({"served": ("birefnet",), "default": "nope"}, "unknown model"),
        ({"extra": {"birefnet": ModelEntry(licence="x", commercial_use=True)}}, "may not redefine"),
    ],
)
def test_settings_naming_what_the_catalogue_lacks_are_refused(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ModelSettings(**kwargs)  # type: ignore[arg-type]


def test_a_hub_id_resolves_to_its_stable_name_and_duplicates_collapse() -> None:
    models = ModelSettings(served=("briaai/RMBG-2.0", "rmbg-2.0", "ZhengPeng7/BiRefNet_lite"))
    assert models.served == ("rmbg-2.0", "birefnet-lite") and models.default == "rmbg-2.0"


def test_ingest_model_is_the_single_model_shorthand() -> None:
    settings = IngestSettings(ingest=IngestOptions(model="birefnet"))
    assert settings.models.served == ("birefnet",) and settings.models.default == "birefnet"
    legacy = IngestSettings(ingest=IngestOptions(model="briaai/RMBG-2.0"))
    assert legacy.models.served == ("rmbg-2.0",)
    both = IngestSettings(
        ingest=IngestOptions(model="tiny"), models=ModelSettings(served=("tiny", "birefnet"), extra=TINY)
    )
    assert both.models.served == ("tiny", "birefnet")
    with pytest.raises(ConfigError, match="contradicts"):
        IngestSettings(ingest=IngestOptions(model="birefnet"), models=ModelSettings(served=("rmbg-2.0", "birefnet")))


def test_inference_stores_the_stable_name_never_the_folder(tmp_path: object) -> None:
    default = InferenceSettings()
    assert default.model_name == "rmbg-2.0"
    assert default.inference.model_source == "briaai/RMBG-2.0" and default.inference.backend == "rmbg"
    folder = InferenceSettings(inference=InferenceOptions(model_source=str(tmp_path), model_name="birefnet"))
    assert folder.model_name == "birefnet" and folder.inference.model_name == "birefnet"
    assert folder.inference.model_source == str(tmp_path)
    unnamed_folder = InferenceSettings(inference=InferenceOptions(model_source=str(tmp_path)))
    assert unnamed_folder.model_name == "rmbg-2.0", "a folder without a name is the default model, not its path"
    lite = InferenceSettings(inference=InferenceOptions(model_name="birefnet-lite"))
    assert lite.inference.model_source == "ZhengPeng7/BiRefNet_lite"
    assert InferenceSettings(inference=InferenceOptions(model_name="briaai/RMBG-2.0")).model_name == "rmbg-2.0"
    classic = InferenceSettings(inference=InferenceOptions(backend="classic"))
    assert classic.model_name == "classic-grabcut" and classic.inference.backend == "classic"
    tiny = InferenceSettings(
        models=ModelSettings(served=("tiny",), extra=TINY),
        inference=InferenceOptions(model_source=str(tmp_path), model_name="tiny"),
    )
    assert tiny.model_name == "tiny"


def test_inference_refuses_models_outside_the_catalogue_and_mismatched_backends(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        InferenceSettings(inference=InferenceOptions(model_source=str(tmp_path), model_name=str(tmp_path)))
    with pytest.raises(ConfigError, match="cannot serve"):
        InferenceSettings(inference=InferenceOptions(backend="classic", model_name="birefnet"))
    with pytest.raises(ConfigError, match="no hub id"):
        InferenceSettings(
            models=ModelSettings(served=("tiny",), extra=TINY), inference=InferenceOptions(model_name="tiny")
        )


def test_rmbg_models_json_lists_what_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from rmbg.cli import app

    monkeypatch.setenv("RMBG_MODELS__SERVED", "rmbg-2.0,birefnet")
    monkeypatch.setenv("RMBG_MODELS__DEFAULT", "birefnet")
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["default"] == "birefnet"
    assert [(m["name"], m["licence"], m["commercial_use"]) for m in listing["items"]] == [
        ("rmbg-2.0", "CC BY-NC 4.0", False),
        ("birefnet", "MIT", True),
    ]
    table = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "CC BY-NC 4.0" in table.output and "allowed" in table.output


def test_a_pool_for_a_model_the_deployment_does_not_serve_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="is not served"):
        InferenceSettings(
            models=ModelSettings(served=("rmbg-2.0",)), inference=InferenceOptions(model_name="birefnet")
        )
    # RMBG_MODELS__SERVED unset: the pool's own model is the single-model shorthand (rmbg up --backend classic).
    assert InferenceSettings(inference=InferenceOptions(model_name="birefnet")).model_name == "birefnet"
    assert InferenceSettings(inference=InferenceOptions(backend="classic")).model_name == "classic-grabcut"


def test_a_models_names_are_its_stable_name_and_its_hub_id() -> None:
    models = ModelSettings(served=("rmbg-2.0", "birefnet"))
    assert models.names_for("rmbg-2.0") == models.names_for("briaai/RMBG-2.0") == {"rmbg-2.0", "briaai/RMBG-2.0"}
    assert ModelSettings(served=("tiny",), extra=TINY).names_for("tiny") == {"tiny"}  # no hub id
    assert ModelSettings().names_for("classic-grabcut") == {"classic-grabcut"}
