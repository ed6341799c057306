"""Stage configs: precedence (defaults < YAML < flags), unknown keys, types, choices, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mixlab.config import (
    check_choices,
    check_weights,
    coerce,
    config_from_dict,
    config_to_dict,
    expand_path,
    flag_name,
    load_yaml,
    option,
    parse_mapping,
    resolve_config,
)
from mixlab.errors import ConfigError, MixlabError
from mixlab.ingest import IngestConfig
from mixlab.mixtures.config import SampleConfig, SelectConfig
from mixlab.pipelines.run import SHIPPED
from mixlab.proxy_models.config import PretrainConfig, SwarmConfig
from mixlab.stages import STAGES
from mixlab.synth import SynthConfig

QUICKSTART = SHIPPED / "quickstart.yaml"


def write_yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_apply_when_nothing_is_given():
    assert resolve_config(SynthConfig) == SynthConfig()


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = write_yaml(tmp_path, "seed: 3\ndoc_words: 40\ndocs_per_domain: 50\nnear_dup_clusters: 5\n")
    cfg = resolve_config(SynthConfig, path, {"seed": 7, "doc_words": None})
    assert cfg.seed == 7  # flag beats YAML
    assert cfg.doc_words == 40  # YAML beats default; a flag left unset (None) does not count
    assert cfg.docs_per_domain == 50
    assert cfg.exact_dups == SynthConfig().exact_dups  # untouched default


def test_precedence_holds_through_the_cli(tmp_path, cli):
    path = write_yaml(tmp_path, "seed: 3\ndocs_per_domain: 20\ndoc_words: 30\nnear_dup_clusters: 2\n")
    out = tmp_path / "synth"
    result = cli("synth", "--config", path, "--seed", 9, "--domains", "prose", "--out", out)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "_mixlab" / "manifest.json").read_text())["config"]
    assert recorded["seed"] == 9
    assert recorded["docs_per_domain"] == 20
    assert recorded["domains"] == ["prose"]
    assert recorded["exact_dups"] == SynthConfig().exact_dups


def test_section_form_yaml_reads_the_stage_section_only(tmp_path):
    path = write_yaml(
        tmp_path,
        "synth:\n  seed: 11\n  domains: [prose, code]\ningest:\n  text_column: body\n",
    )
    assert resolve_config(SynthConfig, path, section="synth").seed == 11
    assert resolve_config(SynthConfig, path, section="synth").domains == ("prose", "code")
    assert resolve_config(IngestConfig, path, section="ingest").text_column == "body"


def test_the_section_argument_names_the_yaml_section(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class WeirdlyNamedConfig:
        vocab_size: int = option(100, "vocabulary size")

    path = write_yaml(tmp_path, "tokenizer:\n  vocab_size: 512\n")
    assert resolve_config(WeirdlyNamedConfig, path, section="tokenizer").vocab_size == 512


def test_unknown_yaml_key_names_the_key_and_lists_the_valid_ones(tmp_path):
    path = write_yaml(tmp_path, "seed: 1\nnum_docs: 5\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(SynthConfig, path)
    message = str(err.value)
    assert "'num_docs'" in message
    assert str(path) in message
    for field in dataclasses.fields(SynthConfig):
        assert field.name in message


def test_yaml_keys_may_use_dashes_like_the_flags(tmp_path):
    path = write_yaml(tmp_path, "docs-per-domain: 12\nnear-dup-clusters: 2\n")
    assert resolve_config(SynthConfig, path).docs_per_domain == 12


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("docs_per_domain: many\n", "docs_per_domain"),
        ("docs_per_domain: 2.5\n", "docs_per_domain"),
        ("docs_per_domain: true\n", "docs_per_domain"),
        ("near_dup_levels: {a: 1}\n", "near_dup_levels"),
        ("target_blend: [prose, code]\n", "target_blend"),
        ("seed:\n", "seed"),
    ],
)
def test_wrong_types_are_errors_naming_the_key(tmp_path, yaml_text, key):
    path = write_yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError, match=key):
        resolve_config(SynthConfig, path)


def test_values_are_coerced_to_the_declared_types(tmp_path):
    path = write_yaml(
        tmp_path,
        "docs_per_domain: '400'\ndomains: prose,legal\nnear_dup_levels: [0.9, 0.6]\n"
        "target_blend: prose=0.25,legal=0.75\n",
    )
    cfg = resolve_config(SynthConfig, path)
    assert cfg.docs_per_domain == 400
    assert cfg.domains == ("prose", "legal")
    assert cfg.near_dup_levels == (0.9, 0.6)
    assert cfg.target_blend == {"prose": 0.25, "legal": 0.75}


@pytest.mark.parametrize("text, expected", [("yes", True), ("off", False), ("1", True), ("False", False)])
def test_booleans_accept_the_usual_spellings(text, expected):
    assert coerce("flag", text, bool) is expected


def test_a_bad_flag_value_names_the_flag():
    with pytest.raises(ConfigError, match="--docs-per-domain"):
        resolve_config(SynthConfig, None, {"docs_per_domain": "lots"})


def test_flags_can_complete_a_combination_the_yaml_started(tmp_path):
    # `--domain-from flag` needs `--domain`: valid once both sources are merged.
    path = write_yaml(tmp_path, "domain_from: flag\n")
    cfg = resolve_config(IngestConfig, path, {"domain": "legal"})
    assert (cfg.domain_from, cfg.domain) == ("flag", "legal")
    with pytest.raises(ConfigError, match="--domain"):
        resolve_config(IngestConfig, path)


def test_choices_are_enforced_with_the_allowed_values_listed(tmp_path):
    with pytest.raises(ConfigError) as err:
        IngestConfig(domain_from="filename")
    assert "--domain-from" in str(err.value)
    assert "auto, column, file, folder, flag" in str(err.value)
    path = write_yaml(tmp_path, "on_invalid_utf8: ignore\n")
    with pytest.raises(ConfigError, match="skip, replace"):
        resolve_config(IngestConfig, path)


def test_check_choices_accepts_allowed_values():
    @dataclasses.dataclass(frozen=True)
    class ColourConfig:
        colour: str = option("red", "a colour", choices=("red", "blue"))

        def __post_init__(self) -> None:
            check_choices(self)

    assert ColourConfig("blue").colour == "blue"
    with pytest.raises(ConfigError, match="--colour: 'green' is not one of red, blue"):
        ColourConfig("green")


@pytest.mark.parametrize(
    "text, problem",
    [("- a\n- b\n", "mapping"), ("seed: [1,\n", "not valid YAML")],
)
def test_malformed_yaml_files_are_config_errors(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem):
        resolve_config(SynthConfig, write_yaml(tmp_path, text))


def test_missing_and_empty_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(SynthConfig, tmp_path / "absent.yaml")
    assert resolve_config(SynthConfig, write_yaml(tmp_path, "")) == SynthConfig()


def test_config_errors_are_mixlab_errors_and_value_errors():
    assert issubclass(ConfigError, MixlabError)
    assert issubclass(ConfigError, ValueError)


def test_configs_are_frozen_and_every_field_has_help():
    cfg = SynthConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    for cls in (SynthConfig, IngestConfig):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help text"


def test_resolved_config_round_trips_through_json():
    cfg = SynthConfig(domains=("prose", "code"), target_blend={"prose": 0.5, "code": 0.5}, seed=4)
    plain = json.loads(json.dumps(config_to_dict(cfg)))
    assert plain["domains"] == ["prose", "code"]
    assert config_from_dict(SynthConfig, plain) == cfg


def test_mutable_defaults_are_not_shared_between_instances():
    a, b = SynthConfig(), SynthConfig()
    assert a.target_blend == {} and a.target_blend is not None
    a.target_blend["x"] = 1.0  # a dict default must be a fresh copy per instance
    assert b.target_blend == {}


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"domains": ("prose", "poetry")}, "--domains"),
        ({"domains": ("prose", "prose")}, "--domains"),
        ({"docs_per_domain": 0}, "--docs-per-domain"),
        ({"doc_words": 5}, "--doc-words"),
        ({"near_dup_levels": (0.9, 1.0)}, "--near-dup-levels"),
        ({"near_dup_clusters": 50, "docs_per_domain": 10}, "--near-dup-clusters"),
        ({"target_blend": {"prose": 0.5, "code": 0.4}}, "--target-blend"),
        ({"target_blend": {"news": 1.0}}, "--target-blend"),
        ({"target_docs": 0}, "--target-docs"),
    ],
)
def test_synth_config_validation_names_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        SynthConfig(**kwargs)


def test_weights_must_be_non_negative_and_sum_to_one():
    check_weights({"a": 0.25, "b": 0.75}, "target")
    with pytest.raises(ConfigError, match="sum to"):
        check_weights({"a": 0.2, "b": 0.2}, "target")
    with pytest.raises(ConfigError, match="negative"):
        check_weights({"a": -0.5, "b": 1.5}, "target")
    with pytest.raises(ConfigError, match="no weights"):
        check_weights({}, "target")


def test_mapping_flags_parse_name_value_pairs():
    assert parse_mapping("code=0.5, prose=0.5", "target") == {"code": 0.5, "prose": 0.5}
    with pytest.raises(ConfigError, match="--target"):
        parse_mapping("code", "target")
    with pytest.raises(ConfigError, match="not a number"):
        parse_mapping("code=half", "target")
    assert flag_name("num_perm") == "--num-perm"


@pytest.mark.parametrize("name", list(STAGES))
def test_the_shipped_pipeline_serves_as_config_for_every_single_stage(name):
    """`mixlab <stage> --config quickstart.yaml` reads the stage's own section and the global seed."""
    stage = STAGES[name]
    quickstart = load_yaml(QUICKSTART)
    cfg = resolve_config(stage.config, QUICKSTART, {}, section=name, sections=STAGES)
    expected = dict(quickstart.get(name) or {})
    fields = {f.name for f in dataclasses.fields(stage.config)}
    if "seed" in fields:
        expected.setdefault("seed", quickstart["seed"])
    assert cfg == config_from_dict(stage.config, expected)


def test_quickstart_values_reach_the_stages_that_were_renamed():
    sample = resolve_config(SampleConfig, QUICKSTART, section="mixtures_sample", sections=STAGES)
    swarm = resolve_config(SwarmConfig, QUICKSTART, section="swarm_train", sections=STAGES)
    assert (sample.candidates, swarm.steps) == (128, 40)


def test_a_stage_sections_own_seed_beats_the_global_one(tmp_path):
    path = write_yaml(tmp_path, "description: x\nseed: 5\nsynth: {seed: 2}\n")
    assert resolve_config(SynthConfig, path, section="synth").seed == 2
    assert resolve_config(IngestConfig, path, section="ingest") == IngestConfig()  # no seed: untouched
    assert resolve_config(SampleConfig, path, section="mixtures_sample").seed == 5


def test_flags_override_a_pipeline_files_section(tmp_path):
    path = write_yaml(tmp_path, "description: x\nsynth: {docs_per_domain: 400, doc_words: 30}\n")
    cfg = resolve_config(SynthConfig, path, {"doc_words": 50}, section="synth")
    assert (cfg.docs_per_domain, cfg.doc_words) == (400, 50)


def test_a_pipeline_file_needs_a_section_to_be_read_as_one_stage(tmp_path):
    with pytest.raises(ConfigError, match="pipeline file"):
        resolve_config(SynthConfig, QUICKSTART, sections=STAGES)


def test_a_flat_file_with_a_misspelt_key_is_still_refused(tmp_path):
    path = write_yaml(tmp_path, "docs_per_domian: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'docs_per_domian' for synth"):
        resolve_config(SynthConfig, path, section="synth", sections=STAGES)


def test_a_mapping_flag_error_names_the_flag_once():
    with pytest.raises(ConfigError) as err:
        resolve_config(SelectConfig, None, {"min_weight": "0.5"})
    assert str(err.value).startswith("--min-weight: expected name=value pairs")
    assert flag_name("--min-weight") == "--min-weight"


def test_yaml_paths_expand_the_home_directory_and_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXLAB_SIZES", str(tmp_path))
    path = write_yaml(tmp_path, "model: ${MIXLAB_SIZES}/size.yaml\n")
    assert resolve_config(PretrainConfig, path).model == tmp_path / "size.yaml"
    path = write_yaml(tmp_path, "model: ~/size.yaml\n")
    assert resolve_config(PretrainConfig, path).model == Path.home() / "size.yaml"
    assert expand_path("$MIXLAB_SIZES/a", "x") == tmp_path / "a"


def test_an_unset_variable_in_a_yaml_path_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MIXLAB_NOT_SET", raising=False)
    path = write_yaml(tmp_path, "model: ${MIXLAB_NOT_SET}/size.yaml\n")
    with pytest.raises(ConfigError, match=r"model: .*\$\{MIXLAB_NOT_SET\}, which is not set"):
        resolve_config(PretrainConfig, path)
