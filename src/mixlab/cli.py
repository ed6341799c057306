"""The `mixlab` command line: one thin command per stage, no logic.

Each command's flags are generated from its stage's config dataclass (field help becomes
the flag's help), so the CLI and the Python API cannot drift apart. Precedence is
defaults < ``--config file.yaml`` < flags the user gave.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mixlab import __version__
from mixlab.config import IngestConfig, SynthConfig, _unwrap_optional, field_help, field_types, resolve_config
from mixlab.errors import MixlabError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

# Commands listed under these headings in `mixlab --help`, in the order of the flow.
SECTIONS = {
    "Data": ["synth", "ingest", "dedup"],
    "Tokens": ["tokenizer", "tokenize"],
    "Mixture search": ["mixtures", "swarm"],
    "Training": ["pretrain", "distill", "export"],
    "End to end": ["pipeline", "report"],
}


class StageGroup(click.Group):
    """A click group that lists commands by stage and turns user errors into one-line messages."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed: set[str] = set()
        for title, names in SECTIONS.items():
            rows = [(n, self.commands[n].get_short_help_str(80)) for n in names if n in self.commands]
            listed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [(n, c.get_short_help_str(80)) for n, c in sorted(self.commands.items()) if n not in listed]
        if rest:
            with formatter.section("Other"):
                formatter.write_dl(rest)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MixlabError as exc:
            raise click.ClickException(str(exc)) from None


def _click_type(tp: Any) -> tuple[Any, bool]:
    """(click type, is_boolean_flag) for a config field's annotation."""
    inner, _ = _unwrap_optional(tp)
    if inner is bool:
        return bool, True
    if inner is int:
        return int, False
    if inner is float:
        return float, False
    if inner is Path:
        return click.Path(path_type=Path), False
    return str, False  # str, tuples ("a,b") and mappings ("a=0.5,b=0.5") are parsed by config.coerce


def config_options(cls: type) -> Callable[[Callable], Callable]:
    """Add a flag per config field plus `--config`; the command receives `cfg` built from them."""
    types_ = field_types(cls)
    fields = dataclasses.fields(cls)

    def decorator(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            config_file = kwargs.pop("config_file", None)
            overrides = {f.name: kwargs.pop(f.name) for f in fields}
            cfg = resolve_config(cls, config_file, overrides)
            return func(*args, cfg=cfg, **kwargs)

        for f in reversed(fields):
            click_type, is_flag = _click_type(types_[f.name])
            name = f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            shown = _show_default(default)
            help_text = f"{field_help(f)} [default: {shown}]"
            choices = f.metadata.get("choices")
            if choices:
                click_type = click.Choice(choices)
            if is_flag:
                decl = [f"--{name}/--no-{name}"]
                wrapper = click.option(*decl, f.name, default=None, help=help_text)(wrapper)
            else:
                wrapper = click.option(f"--{name}", f.name, type=click_type, default=None, help=help_text)(wrapper)
        wrapper = click.option(
            "--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML file with these options (flags given here override it)",
        )(wrapper)
        return wrapper

    return decorator


def _show_default(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def out_option(func: Callable) -> Callable:
    func = click.option("--force", is_flag=True, help="overwrite an existing output made with other settings")(func)
    return click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
                        help="output directory (written atomically)")(func)


def scheduler_option(func: Callable) -> Callable:
    return click.option(
        "--scheduler-address", default=None, envvar="DASK_SCHEDULER_ADDRESS", show_envvar=True,
        help="Dask scheduler to run on (default: a LocalCluster sized to this machine)",
    )(func)


def summary(manifest: Any, what: str) -> None:
    """The one-screen end-of-stage summary: where, what came out, how long."""
    if manifest.skipped:
        click.echo(f"{what}: {manifest.path} already up to date")
        return
    counts = ", ".join(f"{k}={v}" for k, v in manifest.counts.items())
    click.echo(f"{what}: wrote {manifest.path} ({counts}) in {manifest.wall_s:.1f}s")


@click.group(cls=StageGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", "-V", prog_name="mixlab")
def main() -> None:
    """mixlab: choose what a language model is pretrained on.

    Dedup corpora, train tokenizers, search the data mixture with swarms of small proxy
    models (RegMix), then pretrain and distill on the chosen mixture. Every stage reads and
    writes parquet and runs on Dask (a LocalCluster unless --scheduler-address is given).
    """


@main.command(context_settings=CONTEXT)
@config_options(SynthConfig)
@out_option
def synth(cfg: SynthConfig, out_dir: Path, force: bool) -> None:
    """Generate a seeded synthetic multi-domain corpus with planted duplicates."""
    from mixlab.synth import run_synth

    manifest = run_synth(cfg, out_dir, force=force)
    summary(manifest, "synth")


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@config_options(IngestConfig)
@out_option
def ingest(inputs: tuple[Path, ...], cfg: IngestConfig, out_dir: Path, force: bool) -> None:
    """Read parquet, JSONL(.gz) or text folders into a documents table (id, domain, text)."""
    from mixlab.ingest import run_ingest

    manifest = run_ingest(list(inputs), cfg, out_dir, force=force)
    summary(manifest, "ingest")
    if manifest.stats.get("skipped"):
        click.echo(f"ingest: skipped {json.dumps(manifest.stats['skipped'])}", err=True)


# --- stage commands added by the stage packages live below ---------------------------------


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
