"""Target and Mixture: one parser and evaluator of targets, one reader and writer of mixture.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixlab.errors import ConfigError, InputError
from mixlab.mixture import Mixture, Target

DOMAINS = ["code", "prose"]
LOSSES = ["code", "prose", "target"]


def test_a_target_is_parsed_once_and_evaluated_from_names_or_columns():
    target = Target.parse("code=0.3,prose=0.7", DOMAINS, LOSSES)
    assert target.terms == {"code": 0.3, "prose": 0.7}
    assert target.loss({"code": 2.0, "prose": 1.0}) == pytest.approx(1.3)
    assert target.loss({"loss.code": 2.0, "loss.prose": 1.0}) == pytest.approx(1.3)
    columns = {"loss.code": np.array([2.0, 1.0]), "loss.prose": np.array([1.0, 1.0])}
    assert target.loss_columns(columns) == pytest.approx([1.3, 1.0])
    assert target.describe() == "70% prose + 30% code"
    assert Target.parse("mean", DOMAINS, LOSSES).terms == {"code": 0.5, "prose": 0.5}
    assert Target.parse("target", DOMAINS, LOSSES).describe() == "the target validation loss"


def test_a_stored_target_round_trips_and_is_checked_against_the_losses():
    target = Target.parse("code=0.3,prose=0.7", DOMAINS, LOSSES)
    assert Target.from_record(target.to_record(), LOSSES) == target
    assert Target.from_record({"code": 1}, LOSSES).terms == {"code": 1.0}
    with pytest.raises(InputError, match="names \\['legal'\\], which have no validation loss"):
        Target.from_record({"spec": "legal", "terms": {"legal": 1.0}}, LOSSES, "mixture.json")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("legal", "'legal' not among the losses"),
        ("code=-1", "non-negative"),
        ("code=0", "sum to zero"),
        ("code=x", "is not a number"),
    ],
)
def test_a_bad_target_is_a_config_error_naming_the_flag(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        Target.parse(spec, DOMAINS, LOSSES)
    assert str(err.value).startswith("--target")


def test_mean_over_runs_without_loss_columns_says_there_are_none():
    with pytest.raises(ConfigError) as err:
        Target.parse("mean", DOMAINS, [])
    assert "no validation losses" in str(err.value) and "e.g." not in str(err.value)


def test_a_mixture_file_is_read_and_checked_against_the_tokens_domains(tmp_path):
    path = tmp_path / "mixture.json"
    Mixture({"code": 0.25, "prose": 0.75}, record={"predicted_target_loss": 3.0}).write(path)
    mixture = Mixture.read(path, available=["code", "prose", "target"])
    assert mixture.weights == {"code": 0.25, "prose": 0.75}
    assert json.loads(path.read_text())["predicted_target_loss"] == 3.0
    (tmp_path / "plain.json").write_text('{"code": 0.5, "prose": 0.5}')
    assert Mixture.read(tmp_path / "plain.json").weights == {"code": 0.5, "prose": 0.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"code": 0.5, "prose": 0.6}', "sum to 1.1"),
        ('{"code": -0.5, "prose": 1.5}', "negative"),
        ('{"code": "half", "prose": 0.5}', "must be numbers"),
        ('{"legal": 1.0}', "domain\\(s\\) \\['legal'\\] are not in the tokens"),
        ("[]", "expected a JSON object"),
    ],
)
def test_a_bad_mixture_file_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(InputError, match=message) as err:
        Mixture.read(tmp_path / "m.json", available=["code", "prose"])
    assert str(err.value).startswith(str(tmp_path / "m.json")) and "\n" not in str(err.value)
