"""`mixlab pipeline run`: every stage in order, each into its own directory under one run root.

A pipeline YAML has top-level settings (``description``, ``seed``, ``inputs``, ``targets``,
``scheduler_address``, ``mixture_search``) and one section per stage, named as in the stage
registry and using the same keys as that stage's flags. Stage ``NN_<name>`` of the run root is
stage NN of ``PIPELINE``; ``mixture_search: iterative`` replaces the four one-shot stages
(sample, swarm, fit, select) by the one ``search`` stage, in ``NN_search`` with the NN of the
first of them, so the later stages keep their directories. A rerun skips finished stages and resumes the one a kill interrupted (from its
own markers or checkpoint); ``--from`` / ``--until`` / ``--dry-run`` select and show the plan.
What the pipeline fills in for a stage (select's token budget, sample's proxy tokens,
tokenize's targets) is derived from the whole pipeline, never from the selected stages only.
The run root may be a URL (``--out s3://bucket/run``): each stage's output is then a URL
under it, and ``storage_options:`` in the pipeline file says how to reach the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mixlab import storage
from mixlab.cluster import dask_client
from mixlab.config import (
    PIPELINE_SETTINGS,
    config_to_dict,
    expand_location,
    expand_path,
    load_yaml,
    section_values,
    storage_options,
)
from mixlab.console import clock, log
from mixlab.errors import ConfigError, MixlabError
from mixlab.stage import (
    Manifest,
    has_manifest,
    manifest_path,
    package_versions,
    partial_dir,
    write_json,
    write_text_atomic,
)
from mixlab.stages import STAGES, Stage, stage_named
from mixlab.storage import Location, is_url, join, name_of

SHIPPED = Path(__file__).parent  # shipped pipelines: mixlab/pipelines/<name>.yaml
# The stages of a pipeline run, in order; a stage's index is the NN of its directory.
PIPELINE = (
    "synth",
    "ingest",
    "dedup",
    "tokenizer_train",
    "tokenize",
    "mixtures_sample",
    "swarm_train",
    "mixtures_fit",
    "mixtures_select",
    "pretrain",
    "distill",
    "report",
)
STAGE_NAMES = PIPELINE
# `mixture_search:` (or --mixture-search): how the mixture is chosen. one-shot: RegMix's sample ->
# swarm -> fit -> select, the whole proxy budget up front; iterative: `mixlab search`, in rounds.
MIXTURE_SEARCH = ("one-shot", "iterative")
ONE_SHOT = ("mixtures_sample", "swarm_train", "mixtures_fit", "mixtures_select")
SEARCH = "search"
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SYNTH_TARGET = "target"  # the synthetic corpus's held-out target set, `target/documents.parquet`


def stage_dir(root: Location, name: str) -> Location:
    """Where stage `name` of a pipeline run writes: `<root>/NN_<name>` (a Path, or a URL).

    `search` takes the number of the first one-shot stage it replaces (`05_search`).
    """
    index = PIPELINE.index(ONE_SHOT[0] if name == SEARCH else name)
    return join(storage.location(root), f"{index:02d}_{name}")


def target_dir(root: Location, target: str) -> Location:
    """Where target corpus `target` is ingested: beside the ingest output, `<root>/NN_target_<name>`."""
    return join(storage.location(root), f"{PIPELINE.index('ingest'):02d}_target_{target}")


def pipeline_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped pipeline (`quickstart`)."""
    path = expand_path(name_or_path, "PIPELINE")
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in shipped_pipelines())
    raise ConfigError(f"{name_or_path}: no such pipeline file, and not a shipped pipeline ({names})")


def shipped_pipelines() -> list[Path]:
    return sorted(SHIPPED.glob("*.yaml"))


@dataclasses.dataclass(frozen=True)
class Step:
    """One stage of a run: `name` is its registry name, or `target_<name>` for a target's ingest."""

    name: str
    stage: Stage
    cfg: Any
    out: Location
    filled: dict[str, Any]  # what the pipeline set for this step beyond its YAML section


@dataclasses.dataclass
class Plan:
    """The resolved pipeline: every step with its config and directory, and which ones run."""

    path: Path
    root: Location
    steps: list[Step]
    inputs: list[Location] | None
    targets: dict[str, list[Location]]
    scheduler_address: str | None
    description: str | None = None
    mixture_search: str = MIXTURE_SEARCH[0]
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    first: int = 0  # index of the first step to run (--from); earlier ones must be finished
    last: int = 0  # one past the last step to run (--until)

    @property
    def selected(self) -> list[Step]:
        return self.steps[self.first : self.last]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def _paths(value: Any, base: Path, where: str) -> list[Location]:
    """A YAML path or list of paths (or URLs): `~` and `${VAR}` expanded, relative to the pipeline file."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise ConfigError(f"{where}: expected a path or a list of paths, got {value!r}")
    paths = [expand_location(p, where) for p in items]
    return [p if is_url(p) or Path(p).is_absolute() else base / p for p in paths]


def _targets(data: Mapping[str, Any], base: Path, where: str) -> dict[str, list[Location]]:
    raw = data.get("targets") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: targets: expected a mapping {{name: [paths]}}, got {raw!r}")
    targets = {}
    for name, paths in raw.items():
        if not TARGET_NAME.match(str(name)):
            raise ConfigError(
                f"{where}: targets: {name!r} is not a usable domain name (letters, digits, _ . -)"
            )
        targets[str(name)] = _paths(paths, base, f"{where}: targets: {name}")
    return targets


def _configs(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Every stage's config from its section (unknown keys and bad values fail here).

    Sections of registry stages the pipeline does not run (`tokenizer_eval`, `export_hf`) are
    allowed, for the file's use as `--config`, and checked too.
    """
    unknown = [k for k in data if k not in STAGES and k not in PIPELINE_SETTINGS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {unknown} (stages: {', '.join(STAGES)}; "
            f"settings: {', '.join(PIPELINE_SETTINGS)})"
        )
    names = [*PIPELINE, SEARCH, *(k for k in STAGES if k in data and k not in (*PIPELINE, SEARCH))]
    return {
        name: STAGES[name].config(**section_values(STAGES[name].config, data, name, str(path)))
        for name in names
    }


def fill_in(configs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings the pipeline derives for a stage from other stages' configs.

    From the whole pipeline, so a run `--until mixtures_select` and a full run give the same
    configs. A value set in the stage's own section is kept.
    """
    swarm, pretrain, sample, select = (
        configs[n] for n in ("swarm_train", "pretrain", "mixtures_sample", "mixtures_select")
    )
    filled: dict[str, dict[str, Any]] = {name: {} for name in configs}
    if getattr(sample, "proxy_tokens", None) == 0:
        # Each domain's repetition is capped against the tokens one proxy of this swarm sees.
        filled["mixtures_sample"]["proxy_tokens"] = swarm.steps * swarm.batch_size * swarm.seq_len
    if select.token_budget == 0 and pretrain.seq_len:
        # The full run's tokens bound how often any domain may repeat (--max-epochs).
        filled["mixtures_select"]["token_budget"] = (
            pretrain.steps * pretrain.batch_size * pretrain.grad_accum * pretrain.seq_len
        )
    return filled


def fill_in_search(data: Mapping[str, Any], configs: Mapping[str, Any]) -> dict[str, Any]:
    """What the `search` stage takes from the one-shot sections its own section leaves out: the
    proxies' recipe (`swarm_train`, less the keys the search sets itself) and fit's target, so
    switching `mixture_search` compares the two methods on the same proxies and target."""
    from mixlab.mixtures.search import SEARCH_OWN

    own = {str(k).replace("-", "_") for k in (data.get(SEARCH) or {})}
    filled: dict[str, Any] = {}
    swarm = {
        k: v for k, v in (data.get("swarm_train") or {}).items() if k.replace("-", "_") not in SEARCH_OWN
    }
    if "swarm" not in own and swarm:
        filled["swarm"] = swarm
    fit = configs["mixtures_fit"]
    if "target" not in own and fit.target != _default(fit, "target"):
        filled["target"] = fit.target
    return filled


def mixture_search(data: Mapping[str, Any], override: str | None, where: str) -> str:
    """The pipeline's method of choosing the mixture: --mixture-search, else `mixture_search:`, else one-shot."""
    value = override if override is not None else data.get("mixture_search", MIXTURE_SEARCH[0])
    if value not in MIXTURE_SEARCH:
        source = "--mixture-search" if override is not None else f"{where}: mixture_search"
        raise ConfigError(f"{source}: {value!r} is not a method; use one of {', '.join(MIXTURE_SEARCH)}")
    return str(value)


def plan_pipeline(
    pipeline: str | Path,
    root: Path | str,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    search: str | None = None,
) -> Plan:
    """Resolve every section into its stage config and directory, before any work is done.

    `search` (one-shot or iterative) overrides the file's `mixture_search:`.
    """
    path = pipeline_path(pipeline)
    data = load_yaml(path)
    method = mixture_search(data, search, str(path))
    configs = _configs(data, path)
    filled = fill_in(configs)
    filled[SEARCH] = fill_in_search(data, configs)
    inputs = (
        _paths(data["inputs"], path.parent, f"{path}: inputs") if data.get("inputs") is not None else None
    )
    targets = _targets(data, path.parent, str(path))
    if inputs is None and configs["synth"].target_blend and SYNTH_TARGET in targets:
        raise ConfigError(
            f"{path}: targets: {SYNTH_TARGET!r} is the synthetic corpus's own target; rename it"
        )
    description = data.get("description")
    if description and configs["report"].title == _default(configs["report"], "title"):
        filled["report"]["title"] = str(description)  # the report is titled by what the run is for
    root = storage.location(root)
    steps = []
    order = PIPELINE
    if method == "iterative":  # the one search stage where the four one-shot stages were
        at = PIPELINE.index(ONE_SHOT[0])
        order = (*PIPELINE[:at], SEARCH, *(n for n in PIPELINE[at:] if n not in ONE_SHOT))
    for name in order:
        if name == "synth" and inputs is not None:
            continue  # real corpora given: nothing to synthesise
        cfg = dataclasses.replace(configs[name], **filled[name])
        steps.append(Step(name, STAGES[name], cfg, stage_dir(root, name), filled[name]))
        if name == "ingest":
            for target in targets:  # each target corpus is its own domain, ingested apart
                step_cfg = dataclasses.replace(cfg, domain_from="flag", domain=target)
                fills = {"domain_from": "flag", "domain": target}
                steps.append(
                    Step(f"target_{target}", STAGES["ingest"], step_cfg, target_dir(root, target), fills)
                )
    names = [s.name for s in steps]
    first, last = 0, len(steps)
    if from_stage is not None:
        first = names.index(_selected(from_stage, names, "--from"))
    if until_stage is not None:
        last = names.index(_selected(until_stage, names, "--until")) + 1
    return Plan(
        path=path,
        root=root,
        steps=steps,
        inputs=inputs,
        targets=targets,
        scheduler_address=data.get("scheduler_address"),
        description=description,
        mixture_search=method,
        first=first,
        last=last,
        storage_options=storage_options(data, str(path)),
    )


def _default(cfg: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cfg) if f.name == name)


def _selected(text: str, names: list[str], flag: str) -> str:
    name = stage_named(text, flag).name
    # A one-shot stage's name selects the search that replaces it, and `search` the one-shot
    # stages (the first for --from, the last for --until), so a command line works for both methods.
    if name in ONE_SHOT and SEARCH in names:
        name = SEARCH
    elif name == SEARCH and SEARCH not in names and ONE_SHOT[0] in names:
        name = ONE_SHOT[0] if flag == "--from" else ONE_SHOT[-1]
    if name not in names:
        raise ConfigError(f"{flag}: stage {name!r} is not part of this pipeline (stages: {', '.join(names)})")
    return name


# The one place that says how earlier outputs feed each stage: (plan, step) -> its inputs.
WIRING: dict[str, Callable[[Plan, Step], dict[str, Any]]] = {
    "synth": lambda plan, step: {},
    "ingest": lambda plan, step: {"sources": plan.inputs or [join(plan.step("synth").out, "documents")]},
    "dedup": lambda plan, step: {"documents": [plan.step("ingest").out]},
    "tokenizer_train": lambda plan, step: {
        "documents": [join(plan.step("dedup").out, "documents")],
        "mixture": None,
    },
    "tokenize": lambda plan, step: {
        "documents": [join(plan.step("dedup").out, "documents")],
        "tokenizer": plan.step("tokenizer_train").out,
        "targets": target_tables(plan) or None,
    },
    "mixtures_sample": lambda plan, step: {"tokens": plan.step("tokenize").out},
    "swarm_train": lambda plan, step: {
        "candidates": join(plan.step("mixtures_sample").out, "candidates.parquet"),
        "tokens": plan.step("tokenize").out,
    },
    "mixtures_fit": lambda plan, step: {
        "runs": join(plan.step("swarm_train").out, "runs.parquet"),
        "candidates": plan.step("mixtures_sample").out,
    },
    "mixtures_select": lambda plan, step: {
        "fit": plan.step("mixtures_fit").out,
        # per-domain tokens: for the repetition cap of --token-budget, and what --verify trains on
        "tokens": plan.step("tokenize").out if step.cfg.token_budget or step.cfg.verify else None,
    },
    "search": lambda plan, step: {"tokens": plan.step("tokenize").out},
    "pretrain": lambda plan, step: {"tokens": plan.step("tokenize").out, "mixture": chosen_mixture(plan)},
    "distill": lambda plan, step: {
        "teacher": plan.step("pretrain").out,
        "tokens": plan.step("tokenize").out,
        "mixture": chosen_mixture(plan),
    },
    "report": lambda plan, step: {"run": plan.root},
}


def chosen_mixture(plan: Plan) -> Location:
    """The mixture.json pretrain and distill train on: the search's, or select's (same shape)."""
    chooser = SEARCH if plan.mixture_search == "iterative" else "mixtures_select"
    return join(plan.step(chooser).out, "mixture.json")


def step_inputs(plan: Plan, step: Step) -> dict[str, Any]:
    """The inputs mapping of `step`, from the directories of the steps before it."""
    if step.name.startswith("target_"):
        return {"sources": plan.targets[step.name.removeprefix("target_")]}
    return WIRING[step.name](plan, step)


def target_tables(plan: Plan) -> list[Location]:
    """The documents tables tokenize takes as validation-only targets: the synthetic corpus's
    target set (domain `target`) and each ingested target corpus."""
    tables = []
    if plan.inputs is None and plan.step("synth").cfg.target_blend:
        tables.append(join(plan.step("synth").out, SYNTH_TARGET, "documents.parquet"))
    return tables + [target_dir(plan.root, name) for name in plan.targets]


def status(plan: Plan, index: int) -> str:
    """What a run would do with step `index`: done, resume, run, or why it is left alone."""
    step = plan.steps[index]
    if index >= plan.last:
        return "after --until: not run"
    with plan_storage(plan):
        raw = _manifest_bytes(step.out)
    if raw is not None:
        try:
            recorded = json.loads(raw).get("config", {})
        except ValueError:
            return "unreadable manifest"
        wanted = json.loads(json.dumps(config_to_dict(step.cfg)))
        # Keys a stage leaves out of its manifest (pretrain's `logger`) change no output.
        changed = sorted(k for k in wanted if k in recorded and recorded[k] != wanted[k])
        if changed:
            return f"done with other settings ({', '.join(changed)}): needs --force"
        return "done" if index >= plan.first else "done (before --from)"
    if index < plan.first:
        return "missing (before --from): run it first"
    return "resumes a partial run" if partial_dir(step.out).exists() else "to run"


def plan_storage(plan: Plan) -> Any:
    """The pipeline file's storage_options in force (those already set when it has none)."""
    return storage.using(plan.storage_options or storage.current_options())


def _manifest_bytes(out: Location) -> bytes | None:
    """The manifest of a stage directory or URL, None when it has none (or it is unreadable)."""
    manifest = manifest_path(out)
    if is_url(manifest):
        return storage.read_if_exists(str(manifest))
    try:
        return Path(manifest).read_bytes() if Path(manifest).is_file() else None
    except OSError:
        return b"unreadable"


# Rough training throughput of 2 CPU cores for these tiny GPTs (flop/s), measured on the demo
# (benchmarks/demo.py): a swarm of packed proxies on Dask workers, and one model trained in
# this process (pretrain, distill, verify). Only says how long a stage will take.
SWARM_FLOPS = 1.6e10
CPU_FLOPS = 3.0e10
FIXED_SECONDS = 1.5  # a stage that trains nothing: reading and writing the demo's small tables


def _train_flops(size: Any, vocab: int, tokens: float, forward_only: bool = False) -> float:
    """6 flop per parameter per token trained (2 for a forward pass): 12 L C^2 in the blocks + V C."""
    layers, width = getattr(size, "n_layer", None) or 2, getattr(size, "n_embd", None) or 64
    params = 12 * layers * width * width + vocab * width
    return (2.0 if forward_only else 6.0) * params * tokens


def estimate_seconds(plan: Plan, step: Step) -> float:
    """A rough CPU estimate of a step's time from its config (model sizes x tokens trained)."""
    cfg, vocab = step.cfg, plan.step("tokenizer_train").cfg.vocab_size
    if step.name == "swarm_train":
        sample = plan.step("mixtures_sample").cfg
        runs = sample.candidates + max(0, cfg.repeats - 1) * min(cfg.repeat_mixtures, sample.candidates)
        return _train_flops(cfg, vocab, runs * cfg.steps * cfg.batch_size * cfg.seq_len) / SWARM_FLOPS
    if step.name == SEARCH:  # the whole budget of proxies, at the recipe of cfg.swarm
        recipe = {
            **config_to_dict(_swarm_defaults()),
            **{k.replace("-", "_"): v for k, v in cfg.swarm.items()},
        }
        size = types.SimpleNamespace(**recipe)
        tokens = cfg.budget * size.steps * size.batch_size * size.seq_len
        return _train_flops(size, vocab, tokens) / SWARM_FLOPS
    if step.name == "mixtures_select" and cfg.verify:
        swarm = plan.step("swarm_train").cfg
        wide = dataclasses.replace(swarm, n_embd=int(swarm.n_embd * cfg.verify_scale))
        tokens = 3 * cfg.verify_seeds * swarm.steps * cfg.verify_scale * swarm.batch_size * swarm.seq_len
        return FIXED_SECONDS + _train_flops(wide, vocab, tokens) / CPU_FLOPS
    if step.name in ("pretrain", "distill"):
        members = (1 + len(getattr(cfg, "baselines", ()))) * getattr(cfg, "seeds", 1)
        if step.name == "distill":
            members = 2 if cfg.compare_scratch else 1
        seq_len = cfg.seq_len or plan.step("pretrain").cfg.seq_len or 128
        tokens = members * cfg.steps * cfg.batch_size * cfg.grad_accum * seq_len
        flops = _train_flops(cfg, vocab, tokens)
        if step.name == "distill":  # the teacher's forward pass on every batch
            flops += _train_flops(plan.step("pretrain").cfg, vocab, tokens / members, forward_only=True)
        return flops / CPU_FLOPS
    return FIXED_SECONDS


def _swarm_defaults() -> Any:
    from mixlab.proxy_models.config import SwarmConfig

    return SwarmConfig()


def describe(plan: Plan) -> str:
    """The plan as text: each step, its directory, its status and what the pipeline filled in."""
    lines = [f"pipeline: {plan.path}" + (f" ({plan.description})" if plan.description else "")]
    lines.append(f"run root: {plan.root}")
    lines.append(f"mixture:  {plan.mixture_search} (mixture_search: {' | '.join(MIXTURE_SEARCH)})")
    if plan.inputs:
        lines.append(f"inputs:   {', '.join(map(str, plan.inputs))}")
    for name, paths in plan.targets.items():
        lines.append(f"target:   {name} <- {', '.join(map(str, paths))}")
    width = max(len(s.name) for s in plan.steps)
    todo = 0.0
    for i, step in enumerate(plan.steps):
        state = status(plan, i)
        guess = estimate_seconds(plan, step)
        if plan.first <= i < plan.last and not state.startswith("done"):
            todo += guess
        lines.append(f"  {step.name:{width}s}  {name_of(step.out):24s} ~{clock(guess):>6s}  {state}")
        fills = dict(step.filled)
        if step.name == "tokenize":
            fills["targets"] = [str(p) for p in target_tables(plan)] or None
        for key, value in fills.items():
            if value is not None:
                lines.append(f"  {'':{width}s}    {key} = {value}")
    lines.append(
        f"estimated time of what is left to run: ~{clock(todo)} on 2 CPU cores (rough: model size x tokens)"
    )
    lines.append("(--dry-run --json: every resolved config)")
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The whole plan as JSON: every step's resolved config, inputs and status."""

    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value, default=str))

    return {
        "pipeline": str(plan.path),
        "description": plan.description,
        "mixture_search": plan.mixture_search,
        "root": str(plan.root),
        "inputs": plain(plan.inputs),
        "targets": plain(plan.targets),
        "stages": [
            {
                "name": step.name,
                "stage": step.stage.name,
                "dir": str(step.out),
                "status": status(plan, i),
                "estimated_s": round(estimate_seconds(plan, step), 1),
                "selected": plan.first <= i < plan.last,
                "filled": plain(step.filled),
                "inputs": plain(step_inputs(plan, step)),
                "config": config_to_dict(step.cfg),
            }
            for i, step in enumerate(plan.steps)
        ],
    }


def check_paths_exist(plan: Plan) -> None:
    """Every path or URL the pipeline file names (inputs, targets) exists, before any stage runs
    (a URL that cannot be reached is one line naming it, see mixlab.storage)."""
    named = [("inputs", p) for p in plan.inputs or []]
    named += [(f"targets: {name}", p) for name, paths in plan.targets.items() for p in paths]
    for where, path in named:
        if not storage.exists(path):
            raise ConfigError(
                f"{where}: {path}: no such file or directory; fix the path in the pipeline file"
            )


def run_pipeline(
    pipeline: str | Path,
    root: Path | str,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: bool = False,
    scheduler_address: str | None = None,
    client: Any = None,
    search: str | None = None,
) -> dict[str, Manifest]:
    """Run the planned steps in order; returns each step's manifest by name.

    The Dask client: `client`, else `scheduler_address`, DASK_SCHEDULER_ADDRESS, the
    pipeline's `scheduler_address:`, dask config, else a LocalCluster (see mixlab.cluster).
    """
    plan = plan_pipeline(pipeline, root, from_stage=from_stage, until_stage=until_stage, search=search)
    with plan_storage(plan):
        return _run_plan(plan, force, scheduler_address, client)


def _run_plan(plan: Plan, force: bool, scheduler_address: str | None, client: Any) -> dict[str, Manifest]:
    check_paths_exist(plan)
    for step in plan.steps[: plan.first]:
        if not has_manifest(step.out):
            raise MixlabError(
                f"--from {plan.steps[plan.first].name}: earlier stage {step.name} has no finished "
                f"output in {step.out}; run it first"
            )
    needs_dask = any(step.stage.uses_dask for step in plan.selected)
    dask = (
        dask_client(client, scheduler_address, pipeline_address=plan.scheduler_address)
        if needs_dask
        else contextlib.nullcontext()
    )
    manifests: dict[str, Manifest] = {}
    started = time.perf_counter()
    record = RunRecord.start(plan)
    estimates = [
        0.0 if status(plan, plan.first + i).startswith("done") else estimate_seconds(plan, step)
        for i, step in enumerate(plan.selected)
    ]
    with dask as dask_handle:
        for k, step in enumerate(plan.selected, 1):
            elapsed = time.perf_counter() - started
            log(
                f"\n== stage {k} of {len(plan.selected)}: {step.name} -> {step.out}  "
                f"(elapsed {clock(elapsed)}; this stage ~{clock(estimates[k - 1])}, "
                f"left ~{clock(sum(estimates[k - 1 :]))}, estimated on 2 CPU cores)"
            )
            t0 = time.perf_counter()
            manifests[step.name] = _run_step(plan, step, dask_handle, force)
            record.finished(step, manifests[step.name], time.perf_counter() - t0)
    record.close(time.perf_counter() - started)
    log(f"\npipeline finished in {clock(time.perf_counter() - started)}; run root {plan.root}")
    return manifests


RUN_YAML = "pipeline.yaml"  # the run root's copy of the pipeline file it was made with
RUN_JSON = "run.json"  # the run root's manifest: the pipeline, each stage's directory, status and time


@dataclasses.dataclass
class RunRecord:
    """The run-level manifest at the run root, rewritten after every stage (so a killed run keeps it)."""

    plan: Plan
    data: dict[str, Any]

    @classmethod
    def start(cls, plan: Plan) -> RunRecord:
        previous = join(plan.root, RUN_JSON)
        try:
            if is_url(previous):
                raw = storage.read_if_exists(str(previous))
            else:
                raw = Path(previous).read_bytes() if Path(previous).is_file() else None
            stages = json.loads(raw).get("stages", {}) if raw is not None else {}
        except (OSError, ValueError):
            stages = {}
        data = {
            "pipeline": str(plan.path),
            "pipeline_copy": RUN_YAML,
            "description": plan.description,
            "mixture_search": plan.mixture_search,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "selected": [s.name for s in plan.selected],
            "stages": stages,
            "versions": package_versions(),
        }
        return cls(plan, data)

    def finished(self, step: Step, manifest: Manifest, seconds: float) -> None:
        entry = {"dir": name_of(step.out), "stage": step.stage.name, "counts": dict(manifest.counts)}
        if manifest.skipped:
            entry.update(self.data["stages"].get(step.name, {}), status="up to date")
        else:
            entry.update(status="done", wall_s=round(seconds, 2))
        self.data["stages"][step.name] = entry
        self._write()

    def close(self, seconds: float) -> None:
        self.data.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), wall_s=round(seconds, 2))
        self._write()

    def _write(self) -> None:
        # Written once a stage has finished, never before: a refused run leaves nothing behind.
        root = self.plan.root
        if is_url(root):
            storage.write_text(join(root, RUN_YAML), self.plan.path.read_text())
            storage.write_text(
                join(root, RUN_JSON), json.dumps(self.data, indent=2, sort_keys=True, default=str)
            )
            return
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / RUN_YAML, self.plan.path.read_text())
        write_json(root / RUN_JSON, self.data)


def _run_step(plan: Plan, step: Step, client: Any, force: bool) -> Manifest:
    t0 = time.perf_counter()
    manifest = step.stage.invoke(step_inputs(plan, step), step.cfg, step.out, client, force=force)
    state = "up to date" if manifest.skipped else f"done in {clock(time.perf_counter() - t0)}"
    counts = ", ".join(f"{k}={v}" for k, v in list(manifest.counts.items())[:6])
    log(f"== {step.name}: {state} ({counts})")
    for line in step.stage.summary(manifest):
        if "\n" not in line:
            log(f"   {line}")
    return manifest
