"""Config validation: defaults, and one clear error naming the key and the expected type."""

import json

import pytest
import yaml

from workflow_scripts.config import ConfigError, canonical, coerce_strings, load_config_file, validate_config

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


# --- numbers from the command line (Snakemake hands nested --config values over as strings) ---------


def test_numeric_strings_from_the_command_line_become_numbers_at_any_depth():
    cfg = validate_config({
        "training": {"lr": "1e-4", "seed": "2.0", "max_grad_norm": "0.5", "batch_size": "8"},
        "awareness": {"seeds": ["0", "1"], "test_fraction": "0.3"},
        "facts": {"limit": "5"},
    })
    assert cfg["training"]["lr"] == 1e-4 and isinstance(cfg["training"]["lr"], float)
    assert cfg["training"]["seed"] == 2 and type(cfg["training"]["seed"]) is int  # integral: an integer
    assert cfg["training"]["max_grad_norm"] == 0.5  # type [number, "null"]
    assert cfg["training"]["batch_size"] == 8 and cfg["facts"]["limit"] == 5
    assert cfg["awareness"]["seeds"] == [0, 1] and cfg["awareness"]["test_fraction"] == 0.3  # array items


def test_snakemake_config_argument_with_a_nested_number_validates():
    from snakemake.cli import parse_config

    given = parse_config(['training={"lr": 1e-4, "max_grad_norm": null}', 'awareness={"seeds": [0, 3]}'])
    assert given["training"]["lr"] == "1e-4"  # what Snakemake hands over
    cfg = validate_config(given)
    assert cfg["training"]["lr"] == 1e-4 and cfg["training"]["max_grad_norm"] is None
    assert cfg["awareness"]["seeds"] == [0, 3]


def test_a_string_that_is_no_number_still_fails_naming_the_key():
    with pytest.raises(ConfigError) as err:
        validate_config({"training": {"lr": "fast"}, "probe": {"batch_size": "2.5"}})
    msg = str(err.value)
    assert "training.lr" in msg and "expected number" in msg and "'fast'" in msg
    assert "probe.batch_size" in msg and "expected integer" in msg and "'2.5'" in msg  # not integral
    with pytest.raises(ConfigError, match="training.lr.*'nan'"):
        validate_config({"training": {"lr": "nan"}})


def test_string_fields_keep_numeric_looking_strings():
    assert validate_config({"model": {"source": "123"}})["model"]["source"] == "123"


def test_coercion_follows_refs_unions_and_arrays():
    schema = {
        "type": "object",
        "properties": {
            "rates": {"type": "array", "items": {"$ref": "#/definitions/rate"}},
            "cap": {"type": ["number", "null"]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "by_name": {"type": "object", "additionalProperties": {"$ref": "#/$defs/count"}},
            "flag": {"type": "boolean"},
        },
        "definitions": {"rate": {"type": "number"}},
        "$defs": {"count": {"type": "integer"}},
    }
    given = {"rates": ["1e-3", "2"], "cap": "null", "either": "7", "by_name": {"a": "3", "b": "4.0"}, "flag": "true"}
    assert coerce_strings(given, schema) == {
        "rates": [0.001, 2.0], "cap": None, "either": 7, "by_name": {"a": 3, "b": 4}, "flag": True}
    assert coerce_strings({"cap": "1.5"}, schema) == {"cap": 1.5}
    assert coerce_strings({"rates": ["x"]}, schema) == {"rates": ["x"]}  # left for the validator to name


# --- canonical params (Snakemake compares repr() of each param value) -----------------------------


def _reversed_keys(value):
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_same_values_in_another_key_order_validate_to_the_same_config():
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    reordered = _reversed_keys(shipped)
    assert list(reordered) != list(shipped)
    a, b = validate_config(shipped), validate_config(reordered)
    assert json.dumps(a) == json.dumps(b) and repr(a) == repr(b)
    sorted_keys = yaml.safe_load(yaml.safe_dump(shipped, sort_keys=True))
    assert repr(validate_config(sorted_keys)) == repr(a)


def test_int_and_float_of_a_number_field_are_the_same_param():
    a = validate_config({"training": {"lr": 1, "weight_decay": 0, "seed": 3, "max_grad_norm": 2},
                         "awareness": {"seeds": [0, 1]}})
    b = validate_config({"awareness": {"seeds": [0.0, 1.0]},
                         "training": {"max_grad_norm": 2.0, "seed": 3.0, "weight_decay": 0.0, "lr": 1.0}})
    assert repr(a) == repr(b) and json.dumps(a) == json.dumps(b)
    assert repr(a["training"]["lr"]) == "1.0" and repr(a["training"]["seed"]) == "3"
    assert repr(a["awareness"]["seeds"]) == "[0, 1]"


def test_a_defaulted_key_takes_its_schema_place():
    """Filling a default must not put the key after the given ones (that would change the params)."""
    given = validate_config({"training": {"batch_size": 8}})["training"]
    written = validate_config({"training": {"lr": 0.0003, "batch_size": 8}})["training"]
    assert list(given) == list(written) and repr(given) == repr(written)


def test_canonical_sorts_keys_the_schema_does_not_name():
    schema = {"type": "object", "properties": {"b": {"type": "number"}, "a": {"type": "object"}}}
    out = canonical({"a": {"z": 1, "y": 2}, "extra": 1, "b": 2}, schema)
    assert repr(out) == "{'b': 2.0, 'a': {'y': 2, 'z': 1}, 'extra': 1}"
