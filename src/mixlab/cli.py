"""The `mixlab` command line: one thin command per entry of the stage registry, no logic.

Each command's flags are generated from its stage's config dataclass (field help becomes
the flag's help), so the CLI and the Python API cannot drift apart. Precedence is
defaults < ``--config file.yaml`` < flags the user gave. A command parses, opens the Dask
client (Dask stages), builds the config, calls the registry's run function with its inputs
and prints the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from mixlab import __version__, storage
from mixlab.cluster import dask_client
from mixlab.config import field_help, field_types, load_storage_options, resolve_config, unwrap_optional
from mixlab.errors import MixlabError
from mixlab.pipelines.run import (
    MIXTURE_SEARCH,
    describe,
    pipeline_path,
    plan_json,
    plan_pipeline,
    run_pipeline,
    stage_dir,
)
from mixlab.stage import Manifest, check_output_dir
from mixlab.stages import STAGES, Alert, Stage, format_predictions, predict_file

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

# Commands listed under these headings in `mixlab --help`, in the order of the flow.
SECTIONS = {
    "Data": ["synth", "ingest", "dedup"],
    "Tokens": ["tokenizer", "tokenize"],
    "Mixture search": ["mixtures", "swarm", "search"],
    "Training": ["pretrain", "distill", "export"],
    "End to end": ["pipeline", "report"],
}
SHORT_HELP = 400  # the whole first sentence of a command's help; the listing wraps it


class StageGroup(click.Group):
    """A click group that lists commands by stage and turns user errors into one-line messages."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not any(n in self.commands for names in SECTIONS.values() for n in names):
            rows = [(n, c.get_short_help_str(SHORT_HELP)) for n, c in sorted(self.commands.items())]
            if rows:
                with formatter.section("Commands"):
                    formatter.write_dl(rows)
            return
        listed: set[str] = set()
        for title, names in SECTIONS.items():
            rows = [(n, self.commands[n].get_short_help_str(SHORT_HELP)) for n in names if n in self.commands]
            listed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [
            (n, c.get_short_help_str(SHORT_HELP)) for n, c in sorted(self.commands.items()) if n not in listed
        ]
        if rest:
            with formatter.section("Other"):
                formatter.write_dl(rest)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MixlabError as exc:
            raise click.ClickException(str(exc)) from None


# --- paths or URLs ---------------------------------------------------------------------------------


class Location(click.ParamType):
    """A local path (checked like click.Path, given as a Path) or an fsspec URL (kept a str).

    A URL is not checked here: reaching the store is the stage's job, and its errors are one
    line naming the URL and the cause (mixlab.storage).
    """

    name = "path"

    def __init__(self, **path_kwargs: Any) -> None:
        self.path = click.Path(path_type=Path, **path_kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if storage.is_url(value):
            return value
        return self.path.convert(value, param, ctx)


# --- flags from a config dataclass ---------------------------------------------------------------


def _click_type(tp: Any) -> tuple[Any, bool]:
    """(click type, is_boolean_flag) for a config field's annotation."""
    inner, _ = unwrap_optional(tp)
    if inner is bool:
        return bool, True
    if inner is int:
        return int, False
    if inner is float:
        return float, False
    if inner is Path:
        return click.Path(path_type=Path), False
    return str, False  # str, tuples ("a,b") and mappings ("a=0.5,b=0.5") are parsed by config.coerce


def _show_default(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def config_params(cls: type) -> list[click.Parameter]:
    """`--config` and one flag per config field (None when not given, so YAML can fill it)."""
    types_ = field_types(cls)
    params: list[click.Parameter] = [
        click.Option(
            ["--config", "config_file"],
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML file with these options, or a pipeline file (flags given here override it)",
        )
    ]
    for f in dataclasses.fields(cls):
        click_type, is_flag = _click_type(types_[f.name])
        name = f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{field_help(f)} [default: {_show_default(default)}]"
        if f.metadata.get("choices"):
            click_type = click.Choice(f.metadata["choices"])
        decl = [f"--{name}/--no-{name}" if is_flag else f"--{name}", f.name]
        params.append(click.Option(decl, type=None if is_flag else click_type, default=None, help=help_text))
    return params


def out_params(default: str | None = None) -> list[click.Parameter]:
    """`--out` (required unless the command says its `default`) and `--force`."""
    return [
        click.Option(
            ["--out", "out_dir"],
            required=default is None,
            type=Location(),
            help="output directory or URL (s3://bucket/prefix), written atomically"
            + (f" [default: {default}]" if default else ""),
        ),
        click.Option(
            ["--force"],
            is_flag=True,
            help="recompute and replace an existing output (needed when its settings or inputs changed)",
        ),
    ]


def env_option(flag: str, envvar: str, help: str) -> click.Option:
    """A flag that an environment variable can also set (shown in --help)."""
    return click.Option([flag], default=None, envvar=envvar, show_envvar=True, help=help)


def scheduler_param() -> click.Option:
    return env_option(
        "--scheduler-address",
        "DASK_SCHEDULER_ADDRESS",
        "Dask scheduler to run on (default: dask config's scheduler-address, else a LocalCluster)",
    )


def gpus_param() -> click.Option:
    return env_option(
        "--gpus",
        "MIXLAB_GPUS",
        "GPUs a LocalCluster pins one worker each to, by position (0,1), or none [default: every visible GPU]",
    )


def documents_argument(name: str = "documents") -> click.Argument:
    return click.Argument([name], nargs=-1, required=True, type=Location(exists=True))


def path_option(decl: str, help_text: str, *, required: bool = True, file_okay: bool = False) -> click.Option:
    return click.Option(
        [decl],
        required=required,
        default=None,
        type=Location(exists=True, file_okay=file_okay),
        help=help_text,
    )


# --- one command per registry entry ------------------------------------------------------------------


def say(stage: Stage, manifest: Manifest) -> None:
    """The one-screen end-of-stage summary: where, what came out, how long, then the stage's own lines."""
    if manifest.skipped:
        click.echo(f"{stage.words}: {manifest.path} already up to date")
    else:
        counts = ", ".join(f"{k}={v}" for k, v in manifest.counts.items())
        click.echo(f"{stage.words}: wrote {manifest.path} ({counts}) in {manifest.wall_s:.1f}s")
    for line in stage.summary(manifest):
        click.echo(line if "\n" in line else f"{stage.words}: {line}", err=isinstance(line, Alert))


def _input_value(value: Any) -> Any:
    """A parsed CLI value as a stage input: tuples become lists, an empty optional list None."""
    if isinstance(value, tuple):
        return list(value) or None
    return value


class LeadingList(click.Argument):
    """A leading list argument (`TOKENIZERS... DOCUMENTS`). Given one value, click fills the
    argument after the list and leaves the list empty: what is missing is that next argument."""

    def __init__(self, name: str, then: click.Argument, **kwargs: Any) -> None:
        super().__init__([name], nargs=-1, required=False, metavar=f"{name.upper()}...", **kwargs)
        self.then = then

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        value = super().process_value(ctx, value)
        if not value:
            raise click.MissingParameter(ctx=ctx, param=self.then)
        return value


def stage_command(
    stage: Stage,
    help_text: str,
    *input_params: click.Parameter,
    out_default: tuple[str, Callable[[Mapping[str, Any]], Path]] | None = None,
    hidden: Sequence[click.Parameter] = (),
) -> click.Command:
    """The command for `stage`: its input arguments and flags, its config's flags, --out / --force.

    `out_default` is (what the help says, how to derive it from the inputs) when --out is optional.
    """
    fields = [f.name for f in dataclasses.fields(stage.config)]
    clash = {p.name for p in input_params} & set(fields)
    if clash:
        raise TypeError(f"{stage.name}: input flag(s) {sorted(clash)} are also config fields")
    params = [*input_params, *config_params(stage.config), *out_params(out_default and out_default[0])]
    if stage.uses_dask:
        params += [scheduler_param(), gpus_param()]
    params += hidden

    def callback(config_file: Path | None, out_dir: Path | None, force: bool, **kwargs: Any) -> None:
        overrides = {name: kwargs.pop(name) for name in fields}
        cfg = resolve_config(stage.config, config_file, overrides, section=stage.name, sections=STAGES)
        inputs = {name: _input_value(kwargs.pop(name)) for name in stage.inputs if name in kwargs}
        out = out_dir if out_dir is not None else out_default[1](inputs)  # type: ignore[index]
        address = kwargs.pop("scheduler_address", None)
        gpus = kwargs.pop("gpus", None)
        with storage.using(load_storage_options(config_file)):
            if stage.uses_dask:
                check_output_dir(out)  # a refusal before a Dask cluster is started for nothing
            with (
                dask_client(scheduler_address=address, gpus=gpus)
                if stage.uses_dask
                else contextlib.nullcontext() as client
            ):
                manifest = stage.invoke(inputs, cfg, out, client, force=force)
        if _main_rank():
            say(stage, manifest)

    return click.Command(
        stage.command[-1], callback=callback, params=params, help=help_text, context_settings=CONTEXT
    )


@click.group(cls=StageGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", "-V", prog_name="mixlab")
def main() -> None:
    """mixlab: choose what a language model is pretrained on.

    Dedup corpora, train tokenizers, search the data mixture with swarms of small proxy
    models (RegMix), then pretrain and distill on the chosen mixture. Every stage reads and
    writes parquet and runs on Dask (a LocalCluster unless --scheduler-address is given).
    """


def group(name: str, help_text: str) -> click.Group:
    made = StageGroup(name, help=help_text, context_settings=CONTEXT)
    main.add_command(made)
    return made


GROUPS = {
    "tokenizer": group(
        "tokenizer", "Train tokenizers on a mixture-weighted sample and compare them per domain."
    ),
    "mixtures": group(
        "mixtures", "Candidate mixtures, the regression from weights to loss, and the chosen mixture."
    ),
    "swarm": group("swarm", "Train swarms of small GPT proxies on candidate mixtures."),
    "export": group("export", "Export trained models to other formats."),
    "pipeline": group("pipeline", "Run the whole flow from one YAML file (shipped: quickstart)."),
}
RESUME = click.Option(
    ["--resume"], is_flag=True, hidden=True, help="accepted and ignored: an interrupted run always resumes"
)
TOKENS = "tokenize output directory (token shards, token counts, tokenizer)"
EVAL_DOCUMENTS = click.Argument(["documents"], type=Location(exists=True))


def add(stage: Stage, help_text: str, *params: click.Parameter, **kwargs: Any) -> None:
    """Register `stage`'s command under its CLI words (`swarm train` -> the swarm group)."""
    parent = GROUPS[stage.command[0]] if len(stage.command) > 1 else main
    parent.add_command(stage_command(stage, help_text, *params, **kwargs))


add(STAGES["synth"], "Generate a seeded synthetic multi-domain corpus with planted duplicates.")
add(
    STAGES["ingest"],
    "Read SOURCES (paths or URLs: parquet, JSONL[.gz|.zst|.bz2|.xz], Arrow IPC, text folders or --glob, "
    "hf://datasets/ORG/NAME) into a documents table (id, domain, text).",
    click.Argument(["sources"], nargs=-1, required=True, type=Location()),
)
add(
    STAGES["dedup"],
    "Remove exact and near duplicates (MinHash LSH, verified by exact Jaccard) from DOCUMENTS.",
    documents_argument(),
    path_option(
        "--against",
        "an earlier dedup output (run with --keep-signatures): also remove documents that duplicate one it kept",
        required=False,
    ),
)
add(
    STAGES["tokenizer_train"],
    "Train a BPE / WordPiece / Unigram tokenizer on DOCUMENTS (tokenizer.json + transformers files).",
    documents_argument(),
)
add(
    STAGES["tokenizer_eval"],
    "Compare TOKENIZERS (one or more directories) per domain on held-out DOCUMENTS.",
    LeadingList("tokenizers", then=EVAL_DOCUMENTS, type=Location(exists=True)),
    EVAL_DOCUMENTS,
)
add(
    STAGES["tokenize"],
    "Tokenize DOCUMENTS into token shards per domain and train/valid split, on Dask.",
    documents_argument(),
    path_option(
        "--tokenizer", "tokenizer directory (from `mixlab tokenizer train`, or any with tokenizer.json)"
    ),
    click.Option(
        ["--targets"],
        multiple=True,
        type=Location(exists=True),
        help="documents table of a target corpus, validation only and never mixed (repeatable)",
    ),
)
add(
    STAGES["mixtures_sample"],
    "Sample candidate mixtures around the token prior of TOKENS (RegMix style).",
    click.Argument(["tokens"], type=Location(exists=True, file_okay=False)),
)
add(
    STAGES["swarm_train"],
    "Train one proxy per candidate (in packs, on Dask) and score it on every validation domain.",
    click.Argument(["candidates"], type=Location(exists=True)),
    click.Argument(["tokens"], type=Location(exists=True, file_okay=False)),
)
add(
    STAGES["mixtures_fit"],
    """Fit weights -> target loss (LightGBM + baselines), cross-validated.

    RUNS is a swarm output, runs.parquet, a CSV of w.<domain> / loss.<name> columns, or a weights
    CSV with --metrics (Olmix's ratios.csv + metrics.csv, joined on run_id, run or index; a folder
    holding both works too). Writes fit.json (held-out Spearman, Pearson and RMSE per model, the
    noise floor, the prior), the models and predicted-vs-actual plots.
    """,
    click.Argument(["runs"], type=Location(exists=True)),
    path_option(
        "--candidates",
        "the `mixtures sample` output the runs came from (its prior and sampler are used by select)",
        required=False,
    ),
    path_option(
        "--metrics",
        "metrics CSV (one loss column per metric, lower is better) joined to the weights CSV RUNS by run id",
        required=False,
        file_okay=True,
    ),
)
add(
    STAGES["mixtures_select"],
    """Choose the mixture: simulate from FIT's prior, score, average the best.

    Writes mixture.json (weights, predicted target loss with its spread across the CV models,
    natural and uniform mixtures for comparison) and a plot of the weights against the prior.
    """,
    click.Argument(["fit"], type=Location(exists=True, file_okay=False)),
    path_option(
        "--tokens",
        "tokenize output (or its token_counts.parquet): each domain's tokens, for --token-budget / --verify",
        required=False,
        file_okay=True,
    ),
)

add(
    STAGES["search"],
    """Search the mixture iteratively: a small swarm, then rounds of proxies chosen by the fit.

    Round 1 samples and trains a small swarm (with data experts); each next round fits the runs
    so far and trains the mixtures with the lowest predicted target minus an uncertainty bonus
    (the spread of the cross-validation models), keeping a diversity floor. Stops at --budget
    proxies or once the predicted best is surer than the noise floor. Writes each round,
    rounds.parquet and mixture.json (as `mixtures select` does).
    """,
    click.Argument(["tokens"], type=click.Path(exists=True, file_okay=False, path_type=Path)),
)


@GROUPS["mixtures"].command("predict", context_settings=CONTEXT)
@click.argument("fit_dir", metavar="FIT", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("mixtures", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    default=None,
    help="write every prediction to this .parquet file",
)
@click.option(
    "--model",
    type=click.Choice(["chosen", "lightgbm", "linear", "loglinear"]),
    default="chosen",
    show_default=True,
    help="which fitted model predicts (chosen: the one fit chose)",
)
@click.option(
    "--renormalize", is_flag=True, help="rescale weights that do not sum to 1 instead of refusing them"
)
def mixtures_predict(
    fit_dir: Path, mixtures: Path, out_file: Path | None, model: str, renormalize: bool
) -> None:
    """Predict the target loss of given MIXTURES with FIT's model, best first.

    MIXTURES: a parquet or CSV table of w.<domain> columns (e.g. candidates.parquet), or a
    mixture JSON. Prints a table (with the CV models' spread); --out writes all rows as parquet.
    """
    table = predict_file(fit_dir, mixtures, out_file, model=model, renormalize=renormalize)
    click.echo(format_predictions(table))
    if out_file is not None:
        click.echo(f"mixtures predict: wrote {out_file} ({table.num_rows} mixtures)", err=True)


def mixture_option() -> click.Option:
    return click.Option(
        ["--mixture"],
        required=True,
        type=Location(exists=True, dir_okay=False),
        help="mixture.json from `mixlab mixtures select`, or a JSON {domain: weight}",
    )


add(
    STAGES["pretrain"],
    "Pretrain the full model on the chosen mixture (and --baselines for comparison).",
    path_option("--tokens", TOKENS),
    mixture_option(),
    hidden=[RESUME],
)
add(
    STAGES["distill"],
    "Distill a teacher into a smaller student (--compare-scratch: and train it from scratch).",
    path_option("--teacher", "teacher model directory (from `mixlab pretrain`, `distill` or `export hf`)"),
    path_option("--tokens", "tokenize output directory made with the teacher's tokenizer"),
    click.Option(
        ["--mixture"],
        type=Location(exists=True, dir_okay=False),
        default=None,
        help="mixture.json to train on [default: the teacher's training mixture]",
    ),
    hidden=[RESUME],
)
add(
    STAGES["export_hf"],
    "Write MODEL as a Hugging Face Llama checkpoint (config.json, model.safetensors, tokenizer).",
    click.Argument(["model"], type=Location(exists=True, file_okay=False)),
)
add(
    STAGES["export_stream"],
    "Write the mixed token stream of TOKENS and --mixture as a flat .bin (nanoGPT style) and parquet shards.",
    path_option("--tokens", TOKENS),
    mixture_option(),
)
add(
    STAGES["report"],
    "Write a one-page HTML + markdown report of a pipeline RUN directory.",
    click.Argument(["run"], type=Location(exists=True, file_okay=False)),
    out_default=("RUN/NN_report", lambda inputs: stage_dir(inputs["run"], "report")),
)


# --- pipeline run ------------------------------------------------------------------------------


@GROUPS["pipeline"].command("run", context_settings=CONTEXT)
@click.argument("pipeline_file", metavar="PIPELINE")
@click.option(
    "--out",
    "out_dir",
    type=Location(),
    default=None,
    help="run root, a directory or URL (s3://bucket/run); each stage writes <out>/NN_<stage> "
    "[default: runs/<pipeline name>]",
)
@click.option(
    "--from",
    "from_stage",
    default=None,
    help="start at this stage, e.g. 'tokenizer train' (earlier ones must be finished)",
)
@click.option("--until", "until_stage", default=None, help="stop after this stage")
@click.option("--dry-run", is_flag=True, help="print the plan (stages, directories, status), run nothing")
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the whole plan as JSON")
@click.option("--force", is_flag=True, help="recompute every selected stage, replacing its output")
@click.option(
    "--mixture-search",
    type=click.Choice(MIXTURE_SEARCH),
    default=None,
    help="how the mixture is chosen: one-shot (sample, swarm, fit, select: the budget up front) or "
    "iterative (`mixlab search`, in rounds) [default: the pipeline's mixture_search, else one-shot]",
)
@click.option(
    "--scheduler-address",
    default=None,
    envvar="DASK_SCHEDULER_ADDRESS",
    show_envvar=True,
    help="Dask scheduler for the Dask stages (default: the pipeline's scheduler_address, then dask "
    "config's scheduler-address, else a LocalCluster)",
)
@click.option(
    "--gpus",
    default=None,
    envvar="MIXLAB_GPUS",
    show_envvar=True,
    help="GPUs the LocalCluster pins one worker each to, by position (0,1), or none [default: every visible GPU]",
)
def pipeline_run(
    pipeline_file: str,
    out_dir: Path | None,
    from_stage: str | None,
    until_stage: str | None,
    dry_run: bool,
    as_json: bool,
    force: bool,
    mixture_search: str | None,
    scheduler_address: str | None,
    gpus: str | None,
) -> None:
    """Run PIPELINE (a YAML file or a shipped name) stage by stage; finished stages are skipped."""
    if as_json and not dry_run:
        raise click.UsageError("--json: only with --dry-run")
    root = out_dir or Path("runs") / pipeline_path(pipeline_file).stem
    if dry_run:
        plan = plan_pipeline(
            pipeline_file, root, from_stage=from_stage, until_stage=until_stage, search=mixture_search
        )
        click.echo(json.dumps(plan_json(plan), indent=2) if as_json else describe(plan))
        return
    with _gpu_cluster(gpus, scheduler_address) as client:
        manifests = run_pipeline(
            pipeline_file,
            root,
            from_stage=from_stage,
            until_stage=until_stage,
            force=force,
            scheduler_address=scheduler_address,
            client=client,
            search=mixture_search,
        )
    report = manifests.get("report")
    if report is not None:
        click.echo(f"report: {storage.join(report.path or root, 'report.html')}")
    else:
        click.echo(f"pipeline: outputs under {root}")


def _main_rank() -> bool:
    """False on every torchrun rank but 0: rank 0 alone says what a stage wrote."""
    return os.environ.get("RANK", "0") == "0"


def _gpu_cluster(gpus: str | None, scheduler_address: str | None) -> Any:
    """With --gpus, the LocalCluster on those GPUs for the whole pipeline; else the pipeline finds its own."""
    if gpus is None:
        return contextlib.nullcontext()
    if scheduler_address:
        raise click.UsageError("--gpus chooses the GPUs of a LocalCluster: not with --scheduler-address")
    return dask_client(gpus=gpus)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
