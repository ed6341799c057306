"""The CLI root: help, version, every command's --help, and user errors as one line on stderr."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from mixlab import __version__
from mixlab.cli import main


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
    ids = pl.read_parquet(tmp_path / "docs" / "*.parquet")["id"]
    assert set(ids) == set(pl.read_parquet(tmp_path / "corpus" / "documents" / "*.parquet")["id"])
    assert made.stats["target"]["documents"] == SynthConfig().target_docs

    again = cli("ingest", tmp_path / "corpus" / "documents", "--out", tmp_path / "docs")
    assert "already up to date" in again.stdout
