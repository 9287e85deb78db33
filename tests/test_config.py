"""Config validation: defaults, and one clear error naming the key and the expected type."""

import pytest
import yaml

from workflow_scripts.config import ConfigError, load_config_file, validate_config

from conftest import REPO


def test_shipped_config_is_valid_and_complete():
    cfg = load_config_file(REPO / "config.yaml")
    assert cfg["model"]["source"] == "embedded:smollm2"
    assert cfg["probe"]["batch_size"] == 32
    assert cfg["novel"]["llm"]["api_key_env"] == "OPENAI_API_KEY"


def test_defaults_fill_an_empty_config():
    cfg = validate_config({})
    assert cfg["results_dir"] == "results"
    assert cfg["facts"]["source"] == "starter"
    assert cfg["novel"]["generator"] == "fictionaliser"
    assert cfg["novel"]["llm"]["max_retries"] == 5


def test_partial_sections_keep_other_defaults():
    cfg = validate_config({"probe": {"batch_size": 4}, "novel": {"n": 10}})
    assert cfg["probe"]["batch_size"] == 4
    assert cfg["novel"]["n"] == 10 and cfg["novel"]["seed"] == 1234


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError) as err:
        validate_config({"probe": {"batch_size": "big"}})
    msg = str(err.value)
    assert "probe.batch_size" in msg and "expected integer" in msg and "'big'" in msg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"\['batchsize'\] not allowed at 'probe'"):
        validate_config({"probe": {"batchsize": 4}})


def test_enum_violation_lists_choices():
    with pytest.raises(ConfigError, match=r"facts.source.*one of \['starter', 'counterfact', 'file'\]"):
        validate_config({"facts": {"source": "wikipedia"}})


def test_file_source_needs_a_path():
    with pytest.raises(ConfigError, match="facts.path"):
        validate_config({"facts": {"source": "file"}})


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate_config({"probe": {"batch_size": 0}, "novel": {"seed": 1.5}})
    assert "probe.batch_size" in str(err.value) and "novel.seed" in str(err.value)


def test_config_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"dtype": "float64"}}))
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config_file(path)


def test_training_precision_defaults_to_fp32_and_takes_only_known_values():
    assert validate_config({})["training"]["precision"] == "fp32"
    assert validate_config({"training": {"precision": "bf16"}})["training"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match=r"training.precision.*one of \['fp32', 'bf16'\]"):
        validate_config({"training": {"precision": "fp16"}})
