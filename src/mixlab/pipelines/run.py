"""`mixlab pipeline run`: every stage in order, each into its own directory under one run root.

A pipeline YAML has top-level settings (``seed``, ``inputs``, ``scheduler_address``) and
one section per stage, using the same keys as that stage's flags. Stages whose manifests
match are skipped (``run_stage`` sees the same config and inputs), a killed pipeline resumes
from the stage it was in (that stage resumes from its own markers), and ``--from`` /
``--until`` / ``--dry-run`` select and show the plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mixlab.config import config_from_dict, config_to_dict, load_yaml
from mixlab.console import log
from mixlab.errors import ConfigError, MixlabError
from mixlab.stage import Manifest

SHIPPED = Path(__file__).parent  # shipped pipelines: mixlab/pipelines/<name>.yaml
TOP_LEVEL_KEYS = ("seed", "inputs", "scheduler_address", "description")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the flow: its YAML section, config class, and how it is called."""

    name: str
    config: str  # "module:Class"
    call: Callable[[Any, Mapping[str, Path], Path, Any, bool], Manifest]
    uses_dask: bool = False

    def config_class(self) -> type:
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# Each call receives (cfg, outputs so far by stage name, out_dir, client, force). This is the
# one place that knows how one stage's output feeds the next.


def _synth(cfg, done, out, client, force):
    return _import("mixlab.synth:run_synth")(cfg, out, force=force)


def _ingest(cfg, done, out, client, force):
    inputs = done["inputs"] if "inputs" in done else [done["synth"] / "documents"]
    return _import("mixlab.ingest:run_ingest")(inputs, cfg, out, force=force)


def _dedup(cfg, done, out, client, force):
    return _import("mixlab.dedup:run_dedup")(done["ingest"], cfg, out, client=client, force=force)


def _tokenizer_train(cfg, done, out, client, force):
    return _import("mixlab.tokenize.train:run_tokenizer_train")(
        done["dedup"] / "documents", cfg, out, force=force
    )


def _tokenize(cfg, done, out, client, force):
    documents = [done["dedup"] / "documents"]
    target = _target_documents(done)
    if target is not None:
        documents.append(target)
        if "target" not in cfg.valid_domains:  # the target set is validation only, never trained on
            cfg = dataclasses.replace(cfg, valid_domains=(*cfg.valid_domains, "target"))
    return _import("mixlab.tokenize.corpus:run_tokenize")(
        {"documents": documents, "tokenizer": done["tokenizer_train"]}, cfg, out, client=client, force=force
    )


def _target_documents(done: Mapping[str, Path]) -> Path | None:
    """The synthetic corpus's held-out target set, when the pipeline made one."""
    synth = done.get("synth")
    path = synth / "target" / "documents.parquet" if synth is not None else None
    return path if path is not None and path.is_file() else None


def _mixtures_sample(cfg, done, out, client, force):
    return _import("mixlab.mixtures.sample:run_sample")(done["tokenize"], cfg, out, force=force)


def _swarm_train(cfg, done, out, client, force):
    return _import("mixlab.proxy_models.swarm:run_swarm")(
        {"candidates": done["mixtures_sample"] / "candidates.parquet", "tokens": done["tokenize"]},
        cfg,
        out,
        client=client,
        force=force,
    )


def _mixtures_fit(cfg, done, out, client, force):
    return _import("mixlab.mixtures.fit:run_fit")(
        {"runs": done["swarm_train"] / "runs.parquet", "candidates": done["mixtures_sample"]},
        cfg,
        out,
        force=force,
    )


def _mixtures_select(cfg, done, out, client, force):
    pretrain = done["configs"].get("pretrain")
    if cfg.token_budget == 0 and pretrain is not None and pretrain.seq_len:
        # The full run's tokens bound how often any domain may repeat (--max-epochs).
        budget = pretrain.steps * pretrain.tokens_per_step * pretrain.seq_len
        cfg = dataclasses.replace(cfg, token_budget=budget)
    tokens = done["tokenize"] if cfg.token_budget else None
    return _import("mixlab.mixtures.select:run_select")(
        {"fit": done["mixtures_fit"], "tokens": tokens}, cfg, out, force=force
    )


def _pretrain(cfg, done, out, client, force):
    return _import("mixlab.proxy_models.pretrain:run_pretrain")(
        {"tokens": done["tokenize"], "mixture": done["mixtures_select"] / "mixture.json"},
        cfg,
        out,
        force=force,
    )


def _distill(cfg, done, out, client, force):
    return _import("mixlab.proxy_models.distill:run_distill")(
        {
            "teacher": done["pretrain"],
            "tokens": done["tokenize"],
            "mixture": done["mixtures_select"] / "mixture.json",
        },
        cfg,
        out,
        force=force,
    )


def _report(cfg, done, out, client, force):
    return _import("mixlab.pipelines.report:run_report")(dict(done), cfg, out, force=force)


STAGES: tuple[Stage, ...] = (
    Stage("synth", "mixlab.synth:SynthConfig", _synth),
    Stage("ingest", "mixlab.ingest:IngestConfig", _ingest),
    Stage("dedup", "mixlab.dedup.config:DedupConfig", _dedup, uses_dask=True),
    Stage("tokenizer_train", "mixlab.tokenize.config:TokenizerTrainConfig", _tokenizer_train),
    Stage("tokenize", "mixlab.tokenize.config:TokenizeConfig", _tokenize, uses_dask=True),
    Stage("mixtures_sample", "mixlab.mixtures.config:SampleConfig", _mixtures_sample),
    Stage("swarm_train", "mixlab.proxy_models.config:SwarmConfig", _swarm_train, uses_dask=True),
    Stage("mixtures_fit", "mixlab.mixtures.config:FitConfig", _mixtures_fit),
    Stage("mixtures_select", "mixlab.mixtures.config:SelectConfig", _mixtures_select),
    Stage("pretrain", "mixlab.proxy_models.config:PretrainConfig", _pretrain),
    Stage("distill", "mixlab.proxy_models.config:DistillConfig", _distill),
    Stage("report", "mixlab.pipelines.report:ReportConfig", _report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def pipeline_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped pipeline (`quickstart`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in sorted(SHIPPED.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such pipeline file, and not a shipped pipeline ({names})")


def shipped_pipelines() -> list[Path]:
    return sorted(SHIPPED.glob("*.yaml"))


@dataclasses.dataclass
class Plan:
    """The resolved pipeline: which stages run, with which configs, into which directories."""

    root: Path
    stages: list[tuple[Stage, Any, Path]]
    inputs: list[Path] | None
    scheduler_address: str | None
    first: int = 0  # index of the first stage to run (--from); earlier ones must be finished


def plan_pipeline(
    pipeline: str | Path, root: Path | str, *, from_stage: str | None = None, until_stage: str | None = None
) -> Plan:
    """Resolve every section into its stage config (unknown keys and bad values fail here, before any work)."""
    path = pipeline_path(pipeline)
    data = load_yaml(path)
    unknown = [k for k in data if k not in STAGE_NAMES and k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {unknown} (stages: {', '.join(STAGE_NAMES)}; "
            f"settings: {', '.join(TOP_LEVEL_KEYS)})"
        )
    for bound, flag in ((from_stage, "--from"), (until_stage, "--until")):
        if bound is not None and bound not in STAGE_NAMES:
            raise ConfigError(f"{flag}: unknown stage {bound!r} (stages: {', '.join(STAGE_NAMES)})")
    inputs = data.get("inputs")
    if inputs is not None:
        inputs = [
            Path(p) if Path(p).is_absolute() else (path.parent / p)
            for p in ([inputs] if isinstance(inputs, str) else inputs)
        ]
    seed = data.get("seed")
    root = Path(root)
    stages = []
    for index, stage in enumerate(STAGES):
        if stage.name == "synth" and inputs is not None:
            continue  # real corpora given: nothing to synthesise
        section = data.get(stage.name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section {stage.name!r} must be a mapping of keys to values")
        cls = stage.config_class()
        values = dict(section)
        if seed is not None and "seed" in {f.name for f in dataclasses.fields(cls)}:
            values.setdefault("seed", seed)
        cfg = config_from_dict(cls, values, f"{path} [{stage.name}]")
        stages.append((stage, cfg, root / f"{index:02d}_{stage.name}"))
    names = [s.name for s, _, _ in stages]
    lo = names.index(from_stage) if from_stage in names else 0
    hi = names.index(until_stage) + 1 if until_stage in names else len(names)
    return Plan(
        root=root,
        stages=stages[:hi],
        inputs=inputs,
        scheduler_address=data.get("scheduler_address"),
        first=lo,
    )


def describe(plan: Plan) -> str:
    """The plan as text: each stage, its directory, and its resolved config."""
    lines = [f"run root: {plan.root}"]
    if plan.inputs:
        lines.append(f"inputs: {', '.join(map(str, plan.inputs))}")
    first = plan.first
    for i, (stage, cfg, out) in enumerate(plan.stages):
        state = "skip (--from)" if i < first else ("done" if (out / "manifest.json").is_file() else "to run")
        lines.append(f"\n[{stage.name}] -> {out}  ({state})")
        lines.append(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
    return "\n".join(lines)


def run_pipeline(
    pipeline: str | Path,
    root: Path | str,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: bool = False,
    scheduler_address: str | None = None,
    client: Any = None,
) -> dict[str, Manifest]:
    """Run the planned stages in order; returns each stage's manifest by name."""
    from mixlab.cluster import dask_client

    plan = plan_pipeline(pipeline, root, from_stage=from_stage, until_stage=until_stage)
    first = plan.first
    done: dict[str, Any] = {"configs": {stage.name: cfg for stage, cfg, _ in plan.stages}}
    if plan.inputs is not None:
        done["inputs"] = plan.inputs
    manifests: dict[str, Manifest] = {}
    needs_dask = any(s.uses_dask for s, _, _ in plan.stages[first:])
    address = scheduler_address or plan.scheduler_address
    started = time.perf_counter()
    with dask_client(client, address) if needs_dask else contextlib.nullcontext() as dask:
        for i, (stage, cfg, out) in enumerate(plan.stages):
            if i < first:
                if not (out / "manifest.json").is_file():
                    raise MixlabError(
                        f"--from {plan.stages[first][0].name}: earlier stage {stage.name} has no finished "
                        f"output in {out}; run it first"
                    )
                done[stage.name] = out
                continue
            log(f"\n== {stage.name} -> {out}")
            t0 = time.perf_counter()
            manifest = stage.call(cfg, done, out, dask, force)
            manifests[stage.name] = manifest
            done[stage.name] = out
            state = "up to date" if manifest.skipped else f"done in {time.perf_counter() - t0:.1f}s"
            counts = ", ".join(f"{k}={v}" for k, v in list(manifest.counts.items())[:6])
            log(f"== {stage.name}: {state} ({counts})")
    log(f"\npipeline finished in {time.perf_counter() - started:.1f}s; run root {plan.root}")
    return manifests
