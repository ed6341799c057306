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
from mixlab.config import _unwrap_optional, field_help, field_types, resolve_config
from mixlab.dedup.config import DedupConfig
from mixlab.errors import MixlabError
from mixlab.ingest import IngestConfig
from mixlab.mixtures.config import FitConfig, SampleConfig, SelectConfig
from mixlab.pipelines.report import ReportConfig
from mixlab.proxy_models.config import DistillConfig, ExportConfig, PretrainConfig, SwarmConfig
from mixlab.synth import SynthConfig
from mixlab.tokenize.config import TokenizeConfig, TokenizerEvalConfig, TokenizerTrainConfig

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
        if not any(n in self.commands for names in SECTIONS.values() for n in names):
            return super().format_commands(ctx, formatter)  # a stage's own group: a plain list
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
                wrapper = click.option(f"--{name}", f.name, type=click_type, default=None, help=help_text)(
                    wrapper
                )
        wrapper = click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
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
    func = click.option(
        "--force",
        is_flag=True,
        help="recompute and replace an existing output (needed when its settings or inputs changed)",
    )(func)
    return click.option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(path_type=Path),
        help="output directory (written atomically)",
    )(func)


def scheduler_option(func: Callable) -> Callable:
    return click.option(
        "--scheduler-address",
        default=None,
        envvar="DASK_SCHEDULER_ADDRESS",
        show_envvar=True,
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


# --- mixtures group (sample here; fit and select are added to it below) ---------------------


@main.group(cls=StageGroup, context_settings=CONTEXT)
def mixtures() -> None:
    """Candidate mixtures, the regression from weights to loss, and the chosen mixture."""


# --- mixtures sample ---------------------------------------------------------------------------


@mixtures.command("sample", context_settings=CONTEXT)
@click.argument("tokens", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_options(SampleConfig)
@out_option
def mixtures_sample(tokens: Path, cfg: SampleConfig, out_dir: Path, force: bool) -> None:
    """Sample candidate mixtures around the token prior of TOKENS (RegMix style)."""
    from mixlab.mixtures.sample import run_sample

    manifest = run_sample({"tokens": tokens}, cfg, out_dir, force=force)
    summary(manifest, "mixtures sample")


# --- swarm train -------------------------------------------------------------------------------


@main.group(cls=StageGroup, context_settings=CONTEXT)
def swarm() -> None:
    """Train swarms of small GPT proxies on candidate mixtures."""


@swarm.command("train", context_settings=CONTEXT)
@click.argument("candidates", type=click.Path(exists=True, path_type=Path))
@click.argument("tokens", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_options(SwarmConfig)
@out_option
@scheduler_option
def swarm_train(
    candidates: Path,
    tokens: Path,
    cfg: SwarmConfig,
    out_dir: Path,
    force: bool,
    scheduler_address: str | None,
) -> None:
    """Train one proxy per candidate (in packs, on Dask) and score it on every validation domain."""
    from mixlab.proxy_models.swarm import run_swarm

    if candidates.is_dir() and (candidates / "candidates.parquet").is_file():
        candidates = candidates / "candidates.parquet"
    manifest = run_swarm(
        {"candidates": candidates, "tokens": tokens},
        cfg,
        out_dir,
        force=force,
        scheduler_address=scheduler_address,
    )
    summary(manifest, "swarm train")
    floor = manifest.stats.get("noise_floor")
    if floor:
        click.echo(
            "swarm train: noise floor (loss std across seeds) "
            + ", ".join(f"{d}={v:.4f}" for d, v in floor.items())
        )


# --- mixtures fit / select ---------------------------------------------------------------------


@mixtures.command("fit", context_settings=CONTEXT)
@click.argument("runs", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--candidates",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="the `mixtures sample` output the runs came from (its prior and sampler are used by select)",
)
@config_options(FitConfig)
@out_option
def mixtures_fit(runs: Path, candidates: Path | None, cfg: FitConfig, out_dir: Path, force: bool) -> None:
    """Fit weights -> target loss (LightGBM + baselines), cross-validated.

    RUNS is a swarm output or runs.parquet. Writes fit.json (held-out Spearman, Pearson and
    RMSE per model, the noise floor, the prior), the models and predicted-vs-actual plots.
    """
    from mixlab.mixtures.fit import run_fit

    manifest = run_fit({"runs": runs, "candidates": candidates}, cfg, out_dir, force=force)
    summary(manifest, "mixtures fit")
    floor = manifest.stats.get("noise_floor_rmse")
    for kind, s in manifest.stats["held_out"].items():
        click.echo(
            f"mixtures fit: {kind:9s} held-out spearman {s['spearman']:.3f}  pearson {s['pearson']:.3f}  "
            f"rmse {s['rmse']:.4g}"
            + (f" (noise floor {floor:.4g})" if floor else "")
            + ("  <- chosen" if kind == manifest.stats["chosen"] else "")
        )
    for warning in manifest.stats.get("warnings", []):
        click.echo(f"mixtures fit: warning: {warning}", err=True)


@mixtures.command("select", context_settings=CONTEXT)
@click.argument("fit", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--tokens",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="tokenize output (or its token_counts.parquet): each domain's tokens, for --token-budget / --verify",
)
@config_options(SelectConfig)
@out_option
def mixtures_select(fit: Path, tokens: Path | None, cfg: SelectConfig, out_dir: Path, force: bool) -> None:
    """Choose the mixture: simulate from FIT's prior, score, average the best.

    Writes mixture.json (weights, predicted target loss with its spread across the CV models,
    natural and uniform mixtures for comparison) and a plot of the weights against the prior.
    """
    from mixlab.mixtures.select import run_select

    manifest = run_select({"fit": fit, "tokens": tokens}, cfg, out_dir, force=force)
    summary(manifest, "mixtures select")
    stats = manifest.stats
    click.echo(
        "mixtures select: "
        + ", ".join(f"{d}={w:.3f}" for d, w in stats["weights"].items())
        + f"; predicted {stats['predicted_target_loss']:.4g} (natural {stats['natural_predicted']:.4g}, "
        f"uniform {stats['uniform_predicted']:.4g})"
    )
    check = stats.get("verification")
    if check:
        click.echo(
            "mixtures select: at the larger proxy size, measured "
            + ", ".join(f"{n}={v:.4g}" for n, v in check["measured"].items())
            + ("; predicted order holds" if check["ordering_holds"] else "; predicted order does NOT hold")
            + ("; chosen beats both beyond seed noise" if check["chosen_beats_baselines"] else "")
        )
    for warning in stats.get("warnings", []):
        click.echo(f"mixtures select: warning: {warning}", err=True)


# --- tokenizer train / eval, tokenize ----------------------------------------------------------


@main.group(cls=StageGroup, context_settings=CONTEXT)
def tokenizer() -> None:
    """Train tokenizers on a mixture-weighted sample and compare them per domain."""


@tokenizer.command("train", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@config_options(TokenizerTrainConfig)
@out_option
def tokenizer_train(inputs: tuple[Path, ...], cfg: TokenizerTrainConfig, out_dir: Path, force: bool) -> None:
    """Train a BPE / WordPiece / Unigram tokenizer on documents INPUTS (tokenizer.json + transformers files)."""
    from mixlab.tokenize.train import run_tokenizer_train

    manifest = run_tokenizer_train(list(inputs), cfg, out_dir, force=force)
    summary(manifest, "tokenizer train")


@tokenizer.command("eval", context_settings=CONTEXT)
@click.argument("tokenizers", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.argument("documents", type=click.Path(exists=True, path_type=Path))
@config_options(TokenizerEvalConfig)
@out_option
def tokenizer_eval(
    tokenizers: tuple[Path, ...], documents: Path, cfg: TokenizerEvalConfig, out_dir: Path, force: bool
) -> None:
    """Compare TOKENIZERS (one or more directories) per domain on held-out DOCUMENTS."""
    from mixlab.tokenize.evaluate import format_table, read_eval, run_tokenizer_eval

    manifest = run_tokenizer_eval(
        {"tokenizers": list(tokenizers), "documents": documents}, cfg, out_dir, force=force
    )
    summary(manifest, "tokenizer eval")
    click.echo(format_table(read_eval(out_dir)))


@main.command("tokenize", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--tokenizer",
    "tokenizer_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="tokenizer directory (from `mixlab tokenizer train`, or any with tokenizer.json)",
)
@config_options(TokenizeConfig)
@out_option
@scheduler_option
def tokenize_command(
    inputs: tuple[Path, ...],
    tokenizer_dir: Path,
    cfg: TokenizeConfig,
    out_dir: Path,
    force: bool,
    scheduler_address: str | None,
) -> None:
    """Tokenize documents INPUTS into token shards per domain and train/valid split, on Dask."""
    from mixlab.tokenize.corpus import run_tokenize

    manifest = run_tokenize(
        {"documents": list(inputs), "tokenizer": tokenizer_dir},
        cfg,
        out_dir,
        force=force,
        scheduler_address=scheduler_address,
    )
    summary(manifest, "tokenize")


# --- dedup -------------------------------------------------------------------------------------


@main.command("dedup", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@config_options(DedupConfig)
@out_option
@scheduler_option
def dedup_command(
    inputs: tuple[Path, ...], cfg: DedupConfig, out_dir: Path, force: bool, scheduler_address: str | None
) -> None:
    """Remove exact and near duplicates (MinHash LSH, verified by exact Jaccard) from documents INPUTS."""
    from mixlab.dedup import run_dedup

    manifest = run_dedup(list(inputs), cfg, out_dir, force=force, scheduler_address=scheduler_address)
    summary(manifest, "dedup")
    if not manifest.skipped:
        cand = manifest.stats["candidates"]
        click.echo(
            f"dedup: {cand['pairs']} candidate pairs checked, {cand['rejected']} rejected; "
            f"kept documents in {Path(out_dir) / 'documents'}, removed ones in duplicates.parquet"
        )


# --- pretrain, distill, export hf ----------------------------------------------------------


def _comparison_lines(out_dir: Path) -> None:
    path = Path(out_dir) / "comparison.json"
    if path.is_file():
        for line in json.loads(path.read_text()).get("summary", []):
            click.echo(f"  {line}")


@main.command(context_settings=CONTEXT)
@click.option(
    "--tokens",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="tokenize output directory (token shards, token counts, tokenizer)",
)
@click.option(
    "--mixture",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="mixture.json from `mixlab mixtures select`, or a JSON {domain: weight}",
)
@config_options(PretrainConfig)
@out_option
@click.option(
    "--resume", is_flag=True, help="continue an interrupted run (same settings) from its last checkpoint"
)
def pretrain(
    tokens: Path, mixture: Path, cfg: PretrainConfig, out_dir: Path, force: bool, resume: bool
) -> None:
    """Pretrain the full model on the chosen mixture (and --baselines for comparison)."""
    from mixlab.proxy_models.pretrain import run_pretrain

    manifest = run_pretrain({"tokens": tokens, "mixture": mixture}, cfg, out_dir, force=force, resume=resume)
    summary(manifest, "pretrain")
    click.echo(f"pretrain: target loss {manifest.stats['target_loss']:.4f}")
    _comparison_lines(out_dir)


@main.command(context_settings=CONTEXT)
@click.option(
    "--teacher",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="teacher model directory (from `mixlab pretrain`, `distill` or `export hf`)",
)
@click.option(
    "--tokens",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="tokenize output directory made with the teacher's tokenizer",
)
@click.option(
    "--mixture",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="mixture.json to train on [default: the teacher's training mixture]",
)
@config_options(DistillConfig)
@out_option
@click.option(
    "--resume", is_flag=True, help="continue an interrupted run (same settings) from its last checkpoint"
)
def distill(
    teacher: Path,
    tokens: Path,
    mixture: Path | None,
    cfg: DistillConfig,
    out_dir: Path,
    force: bool,
    resume: bool,
) -> None:
    """Distill a teacher into a smaller student (--compare-scratch: and train it from scratch)."""
    from mixlab.proxy_models.distill import run_distill

    manifest = run_distill(
        {"teacher": teacher, "tokens": tokens, "mixture": mixture}, cfg, out_dir, force=force, resume=resume
    )
    summary(manifest, "distill")
    _comparison_lines(out_dir)


@main.group(cls=StageGroup, context_settings=CONTEXT)
def export() -> None:
    """Export trained models to other formats."""


@export.command("hf", context_settings=CONTEXT)
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_options(ExportConfig)
@out_option
def export_hf(model_dir: Path, cfg: ExportConfig, out_dir: Path, force: bool) -> None:
    """Write MODEL_DIR as a Hugging Face Llama checkpoint (config.json, model.safetensors, tokenizer)."""
    from mixlab.proxy_models.export import run_export_hf

    manifest = run_export_hf({"model": model_dir}, cfg, out_dir, force=force)
    summary(manifest, "export hf")


# --- pipeline run, report --------------------------------------------------------------------


@main.group(cls=StageGroup, context_settings=CONTEXT)
def pipeline() -> None:
    """Run the whole flow from one YAML file (shipped: quickstart)."""


@pipeline.command("run", context_settings=CONTEXT)
@click.argument("pipeline_file", metavar="PIPELINE")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="run root; each stage writes <out>/NN_<stage> [default: runs/<pipeline name>]",
)
@click.option(
    "--from", "from_stage", default=None, help="start at this stage (earlier ones must be finished)"
)
@click.option("--until", "until_stage", default=None, help="stop after this stage")
@click.option("--dry-run", is_flag=True, help="print the plan and the resolved configs, run nothing")
@click.option("--force", is_flag=True, help="recompute every selected stage, replacing its output")
@scheduler_option
def pipeline_run(
    pipeline_file: str,
    out_dir: Path | None,
    from_stage: str | None,
    until_stage: str | None,
    dry_run: bool,
    force: bool,
    scheduler_address: str | None,
) -> None:
    """Run PIPELINE (a YAML file or a shipped name) stage by stage; finished stages are skipped."""
    from mixlab.pipelines.run import describe, pipeline_path, plan_pipeline, run_pipeline

    root = out_dir or Path("runs") / pipeline_path(pipeline_file).stem
    if dry_run:
        click.echo(
            describe(plan_pipeline(pipeline_file, root, from_stage=from_stage, until_stage=until_stage))
        )
        return
    manifests = run_pipeline(
        pipeline_file,
        root,
        from_stage=from_stage,
        until_stage=until_stage,
        force=force,
        scheduler_address=scheduler_address,
    )
    report = manifests.get("report")
    if report is not None:
        click.echo(f"report: {report.path / 'report.html'}")
    else:
        click.echo(f"pipeline: outputs under {root}")


@main.command("report", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_options(ReportConfig)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where to write report.html / report.md [default: RUN_DIR/NN_report]",
)
@click.option("--force", is_flag=True, help="rebuild an existing report")
def report_command(run_dir: Path, cfg: ReportConfig, out_dir: Path | None, force: bool) -> None:
    """Write a one-page HTML + markdown report of a pipeline run directory."""
    from mixlab.pipelines.report import default_report_dir, run_report

    manifest = run_report(run_dir, cfg, out_dir or default_report_dir(run_dir), force=force)
    summary(manifest, "report")
    click.echo(f"report: {manifest.path / 'report.html'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
