"""The CLI root: help, version, every command's --help, and user errors as one line on stderr."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import subprocess
import sys

import click
import pyarrow as pa
import pytest

from mixlab import __version__
from mixlab.cli import main
from mixlab.errors import ConfigError
from mixlab.mixtures.select import run_mixtures_select
from mixlab.pipelines.run import shipped_pipelines
from mixlab.proxy_models import verify
from mixlab.stages import STAGES, stage_named


def all_commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under `group`, recursively, so commands added later are covered too."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += all_commands(command, (*prefix, name))
    return paths


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_root_help_lists_the_commands_grouped_by_stage(cli, flag):
    result = cli(flag)
    assert result.exit_code == 0
    assert "Usage: main" in result.output or "Usage: mixlab" in result.output
    assert "Data:" in result.output
    for name in ("synth", "ingest"):
        assert name in result.output


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_printed(cli, flag):
    result = cli(flag)
    assert result.exit_code == 0
    assert result.output.strip() == f"mixlab, version {__version__}"


@pytest.mark.parametrize("path", all_commands(), ids=" ".join)
def test_every_command_has_help(cli, path):
    for flag in ("--help", "-h"):
        result = cli(*path, flag)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output
        assert "Traceback" not in result.output


def test_the_foundation_commands_are_registered():
    assert {("synth",), ("ingest",)} <= set(all_commands())


def test_every_flag_has_help_text():
    for path in all_commands():
        command = main
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"mixlab {' '.join(path)} {param.opts[0]} has no help text"


def test_a_config_error_is_one_line_on_stderr_with_exit_1(cli, tmp_path):
    result = cli("synth", "--out", tmp_path / "out", "--docs-per-domain", 0)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "Error: --docs-per-domain: must be at least 1"
    assert not (tmp_path / "out").exists()


def test_an_unknown_yaml_key_is_a_clean_error(cli, tmp_path):
    (tmp_path / "c.yaml").write_text("sed: 1\n")
    result = cli("synth", "--config", tmp_path / "c.yaml", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "unknown key 'sed'" in result.stderr and "valid keys" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["frobnicate"], "No such command"),
        (["synth"], "Missing option '--out'"),
        (["synth", "--out", "x", "--seed", "many"], "'many' is not a valid integer"),
        (["ingest", "x.jsonl", "--out", "y", "--domain-from", "nowhere"], "'nowhere' is not one of"),
        (["synth", "--out", "x", "--config", "absent.yaml"], "does not exist"),
    ],
)
def test_usage_errors_go_to_stderr_without_traceback(cli, args, needle):
    result = cli(*args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_the_console_script_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "mixlab.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and __version__ in done.stdout


@pytest.mark.slow
def test_synth_at_default_size_then_ingest_gives_the_same_documents(cli, tmp_path):
    import polars as pl

    from mixlab.stage import Manifest
    from mixlab.synth import SynthConfig
    from mixlab.tables import check_documents

    synth = cli("synth", "--out", tmp_path / "corpus", "--target-blend", "prose=0.7,code=0.3")
    assert synth.exit_code == 0, synth.output
    ingest = cli("ingest", tmp_path / "corpus" / "documents", "--out", tmp_path / "docs")
    assert ingest.exit_code == 0, ingest.output

    made, ingested = Manifest.load(tmp_path / "corpus"), Manifest.load(tmp_path / "docs")
    assert ingested.counts["documents"] == made.counts["documents"] > 8000
    assert ingested.counts["skipped"] == 0
    per_domain = {d: s["documents"] for d, s in made.stats["domains"].items()}
    assert ingested.stats["per_domain"] == per_domain
    check_documents(tmp_path / "docs")
    ids = pl.read_parquet(tmp_path / "docs" / "documents" / "*.parquet")["id"]
    assert set(ids) == set(pl.read_parquet(tmp_path / "corpus" / "documents" / "*.parquet")["id"])
    assert made.stats["target"]["documents"] == SynthConfig().target_docs

    again = cli("ingest", tmp_path / "corpus" / "documents", "--out", tmp_path / "docs")
    assert "already up to date" in again.stdout


def test_the_package_runs_as_a_module_for_python_m_and_torchrun():
    done = subprocess.run(
        [sys.executable, "-m", "mixlab", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: mixlab ")


def test_importing_the_cli_imports_neither_torch_nor_lightgbm():
    code = (
        "import sys, mixlab.cli, mixlab.stages; "
        "heavy = [m for m in ('torch', 'lightgbm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_root_help_shows_each_commands_first_sentence_whole(cli):
    listing = " ".join(cli("--help").output.partition("Data:")[2].split())
    assert listing and "..." not in listing
    for name, command in main.commands.items():
        sentence = " ".join(command.get_short_help_str(400).split())
        assert f"{name} {sentence}" in listing


def test_every_registered_stage_has_its_command_at_its_cli_words():
    for stage in STAGES.values():
        command: click.Command = main
        for word in stage.command:
            command = command.commands[word]  # type: ignore[attr-defined]
        assert not isinstance(command, click.Group), stage.name
        flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
        assert {"--out", "--force", "--config"} <= flags
        assert ("--scheduler-address" in flags) == stage.uses_dask, stage.name


def test_tokenizer_eval_with_one_directory_says_documents_is_missing(cli, tmp_path):
    (tmp_path / "tok").mkdir()
    for extra in ((), ("--out", tmp_path / "eval")):
        result = cli("tokenizer", "eval", tmp_path / "tok", *extra)
        assert result.exit_code == 2
        assert "Missing argument 'DOCUMENTS'" in result.stderr, result.stderr
        assert "TOKENIZERS" not in result.stderr.splitlines()[-1]


def test_resume_is_accepted_as_a_hidden_no_op_on_pretrain_and_distill(cli, tmp_path):
    for command in ("pretrain", "distill"):
        assert "--resume" not in cli(command, "--help").output
    (tmp_path / "tokens").mkdir()
    (tmp_path / "mixture.json").write_text("{}")
    result = cli(
        "pretrain",
        "--tokens",
        tmp_path / "tokens",
        "--mixture",
        tmp_path / "mixture.json",
        "--out",
        tmp_path / "out",
        "--resume",
    )
    assert "No such option" not in result.stderr
    assert result.exit_code == 1 and result.stderr.startswith("Error: "), result.output


def test_a_malformed_scheduler_address_is_a_clean_could_not_connect_error(cli, tmp_path):
    from mixlab.tables import write_table

    write_table(pa.table({"id": ["a"], "domain": ["x"], "text": ["t"]}), tmp_path / "docs.parquet")
    for address in ("notaurl", "tcp://127.0.0.1:1"):
        result = cli(
            "dedup", tmp_path / "docs.parquet", "--out", tmp_path / "out", "--scheduler-address", address
        )
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: could not connect to Dask scheduler"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_the_shipped_pipeline_is_a_valid_config_for_single_stages_through_the_cli(cli, tmp_path):
    quickstart = shipped_pipelines()[0]
    (tmp_path / "tokens").mkdir()
    result = cli("mixtures", "sample", tmp_path / "tokens", "--config", quickstart, "--out", tmp_path / "s")
    assert result.exit_code == 1
    assert "unknown key" not in result.stderr and "description" not in result.stderr, result.stderr


def test_min_weight_errors_spell_the_flag_once(cli, tmp_path):
    (tmp_path / "fit").mkdir()
    result = cli("mixtures", "select", tmp_path / "fit", "--min-weight", "0.5", "--out", tmp_path / "sel")
    assert result.exit_code == 1
    assert "Error: --min-weight: expected name=value pairs" in result.stderr, result.stderr
    assert "----" not in result.stderr


def test_one_name_per_stage_cli_words_yaml_section_and_registry():
    for name, stage in STAGES.items():
        assert stage.name == name == "_".join(stage.command)
        assert dataclasses.is_dataclass(stage.config) and not hasattr(stage.config, "SECTION"), name
        assert all(f.metadata.get("help") for f in dataclasses.fields(stage.config)), name
    assert [STAGES[n].words for n in ("swarm_train", "tokenizer_train", "export_hf")] == [
        "swarm train",
        "tokenizer train",
        "export hf",
    ]


@pytest.mark.parametrize(
    "spelling", ["tokenizer train", "tokenizer-train", "tokenizer_train", " tokenizer  train"]
)
def test_a_stage_is_found_by_any_spelling_of_its_name(spelling):
    assert stage_named(spelling).name == "tokenizer_train"


def test_an_unknown_stage_name_lists_the_stages():
    with pytest.raises(ConfigError, match=r"--until: unknown stage 'pretraining' \(stages: synth, ingest"):
        stage_named("pretraining", "--until")


def test_every_run_function_has_the_stage_contract_signature():
    for name, stage in STAGES.items():
        run = stage.run.func if isinstance(stage.run, functools.partial) else stage.run
        params = inspect.signature(run).parameters
        assert list(params)[:4] == ["inputs", "cfg", "out_dir", "client"], name
        assert params["force"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert not {"scheduler_address", "resume"} & set(params), name


def test_select_is_bound_to_the_verify_hook_of_proxy_models():
    run = STAGES["mixtures_select"].run
    assert isinstance(run, functools.partial)
    assert run.func is run_mixtures_select and run.keywords == {"verify": verify.verify_mixtures}


def test_a_stage_refuses_inputs_it_does_not_take(tmp_path):
    with pytest.raises(TypeError, match="takes inputs"):
        STAGES["dedup"].invoke({"sources": [tmp_path]}, None, tmp_path / "out")
