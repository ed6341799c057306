"""The stage registry: every stage's one name, its CLI words, config, run function and inputs.

One name per stage everywhere: the CLI's `swarm train` is the YAML section `swarm_train`, the
config section a `--config` file is read from, and the manifest's `stage`. The CLI, the
pipeline runner and `--dry-run` read this table; nothing imports a stage by a string. Every
run function is `run_<stage>(inputs, cfg, out_dir, client=None, *, force=False) -> Manifest`
with `inputs` keyed by `Stage.inputs`. No stage module imports torch or lightgbm at import
time, so importing this module (and `mixlab.cli`) stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mixlab.config import config_from_dict
from mixlab.dedup.config import DedupConfig
from mixlab.dedup.stage import run_dedup
from mixlab.errors import ConfigError
from mixlab.ingest import IngestConfig, run_ingest
from mixlab.mixtures.config import FitConfig, SampleConfig, SelectConfig
from mixlab.mixtures.fit import run_mixtures_fit
from mixlab.mixtures.sample import run_mixtures_sample
from mixlab.mixtures.search import SearchConfig, run_search
from mixlab.mixtures.select import format_predictions, predict_file, run_mixtures_select  # noqa: F401 (cli)
from mixlab.pipelines.report import ReportConfig, run_report
from mixlab.proxy_models.config import (
    DistillConfig,
    ExportConfig,
    ExportStreamConfig,
    PretrainConfig,
    SwarmConfig,
)
from mixlab.proxy_models.distill import run_distill
from mixlab.proxy_models.export import run_export_hf, run_export_stream
from mixlab.proxy_models.pretrain import run_pretrain
from mixlab.proxy_models.swarm import run_swarm_train
from mixlab.proxy_models.verify import verify_mixtures
from mixlab.stage import Manifest
from mixlab.storage import join, localize
from mixlab.synth import SynthConfig, run_synth
from mixlab.tokenize.config import TokenizeConfig, TokenizerEvalConfig, TokenizerTrainConfig
from mixlab.tokenize.corpus import run_tokenize
from mixlab.tokenize.evaluate import format_table, read_eval, run_tokenizer_eval
from mixlab.tokenize.train import run_tokenizer_train

# Inputs that may be raw corpora at a URL, opened where they are read (on the workers); any
# other URL input is read from a local copy (mixlab.storage.localize).
CORPUS_INPUTS = ("sources", "documents", "targets")


class Alert(str):
    """A summary line meant for stderr (a warning, or what was skipped)."""


Summary = Callable[[Manifest], Iterable[str]]


def _nothing(manifest: Manifest) -> Iterable[str]:
    return ()


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: `name` is its YAML section, config section and manifest stage; the CLI
    spells it as words (`swarm_train` is `mixlab swarm train`)."""

    name: str
    config: type
    run: Callable[..., Manifest]
    inputs: tuple[str, ...]
    uses_dask: bool = False
    summary: Summary = _nothing  # lines said after the stage, beyond "wrote DIR (counts)"

    @property
    def command(self) -> tuple[str, ...]:
        """The CLI words: `("swarm", "train")`."""
        return tuple(self.name.split("_"))

    @property
    def words(self) -> str:
        """`swarm train`: how the CLI (and messages) spell the stage."""
        return " ".join(self.command)

    def invoke(
        self,
        inputs: Mapping[str, Any],
        cfg: Any,
        out_dir: Path | str,
        client: Any = None,
        *,
        force: bool = False,
    ) -> Manifest:
        """Run the stage with exactly its inputs (those not given are None)."""
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise TypeError(f"{self.name} takes inputs {self.inputs}, not {sorted(unknown)}")
        # A URL input that is a mixlab output (tokens, tokenizer, model, fit, mixture) is read
        # from a local copy; a raw corpus in a bucket is passed on for workers to open.
        given = {name: localize(inputs.get(name), raw=name in CORPUS_INPUTS) for name in self.inputs}
        return self.run(given, cfg, out_dir, client, force=force)


# --- what each stage says when it finishes (read from its manifest and outputs) ---------------


def _ingest_summary(manifest: Manifest) -> Iterable[str]:
    if manifest.stats.get("skipped"):
        yield Alert(f"skipped {json.dumps(manifest.stats['skipped'])}")


def _dedup_summary(manifest: Manifest) -> Iterable[str]:
    if not manifest.skipped:
        cand = manifest.stats["candidates"]
        yield (
            f"{cand['pairs']} candidate pairs checked, {cand['rejected']} rejected; kept documents in "
            f"{join(manifest.path or '.', 'documents')}, removed ones in duplicates.parquet"
        )


def _eval_table(manifest: Manifest) -> Iterable[str]:
    yield "\n" + format_table(read_eval(manifest.local_dir()))


def _swarm_summary(manifest: Manifest) -> Iterable[str]:
    floor = manifest.stats.get("noise_floor")
    if floor:
        yield "noise floor (loss std across seeds) " + ", ".join(f"{d}={v:.4f}" for d, v in floor.items())


def _fit_summary(manifest: Manifest) -> Iterable[str]:
    floor = manifest.stats.get("noise_floor_rmse")
    for kind, s in manifest.stats["held_out"].items():
        yield (
            f"{kind:9s} held-out spearman {s['spearman']:.3f}  pearson {s['pearson']:.3f}  rmse {s['rmse']:.4g}"
            + (f" (noise floor {floor:.4g})" if floor else "")
            + ("  <- chosen" if kind == manifest.stats["chosen"] else "")
        )
    yield from _warnings(manifest)


def _select_summary(manifest: Manifest) -> Iterable[str]:
    stats = manifest.stats
    yield (
        ", ".join(f"{d}={w:.3f}" for d, w in stats["weights"].items())
        + f"; predicted {stats['predicted_target_loss']:.4g} (natural {stats['natural_predicted']:.4g}, "
        f"uniform {stats['uniform_predicted']:.4g})"
    )
    check = stats.get("verification")
    if check:
        yield (
            "at the larger proxy size, measured "
            + ", ".join(f"{n}={v:.4g}" for n, v in check["measured"].items())
            + ("; predicted order holds" if check["ordering_holds"] else "; predicted order does NOT hold")
            + ("; chosen beats both beyond seed noise" if check["chosen_beats_baselines"] else "")
        )
    yield from _warnings(manifest)


def _warnings(manifest: Manifest) -> Iterable[str]:
    # --- search (issue 16.4): each warning once: a run logs its own as it goes ---
    if not manifest.skipped:
        return
    # --- end search ---
    for warning in manifest.stats.get("warnings", []):
        yield Alert(f"warning: {warning}")


def _comparison(manifest: Manifest) -> Iterable[str]:
    path = manifest.local_dir() / "comparison.json"
    if path.is_file():
        for line in json.loads(path.read_text()).get("summary", []):
            yield f"  {line}"


def _pretrain_summary(manifest: Manifest) -> Iterable[str]:
    yield f"target loss {manifest.stats['target_loss']:.4f}"
    yield from _comparison(manifest)


def _search_summary(manifest: Manifest) -> Iterable[str]:
    stats = manifest.stats
    for r in stats.get("rounds", []):
        yield (
            f"round {r['round']}: {r['proxies']} proxies, predicted best {r['predicted_best']:.4g} "
            f"(spread {r['best_spread']:.2g}), held-out spearman {r['held_out_spearman']:.3f}"
        )
    yield (
        ", ".join(f"{d}={w:.3f}" for d, w in stats["weights"].items())
        + f"; predicted {stats['predicted_target_loss']:.4g}; stopped: {stats['stop']}"
    )
    yield from _warnings(manifest)


def _report_summary(manifest: Manifest) -> Iterable[str]:
    yield str(join(manifest.path or ".", "report.html"))


# --- the registry, in the order of the flow ---------------------------------------------------

# `--verify` trains models, which mixtures/ may not import: the hook is bound here.
_select_with_verify = functools.partial(run_mixtures_select, verify=verify_mixtures)


def _train_round(
    candidates: Path, tokens: Path, out_dir: Path, settings: Mapping[str, Any], client: Any
) -> Manifest:
    """`search`'s trainer: one round's candidates as a swarm (settings: `swarm train`'s keys)."""
    cfg = config_from_dict(SwarmConfig, settings, "search: swarm")
    return run_swarm_train({"candidates": candidates, "tokens": tokens}, cfg, out_dir, client)


# `search` trains proxies, which mixtures/ may not import: the trainer is bound here too.
_search_with_training = functools.partial(run_search, train=_train_round)

# fmt: off
STAGES: dict[str, Stage] = {s.name: s for s in (
    #     name               config                run                  inputs                                 Dask?  summary
    Stage("synth",           SynthConfig,          run_synth,           (),                                    False, _nothing),
    Stage("ingest",          IngestConfig,         run_ingest,          ("sources",),                          False, _ingest_summary),
    Stage("dedup",           DedupConfig,          run_dedup,           ("documents", "against"),              True,  _dedup_summary),
    Stage("tokenizer_train", TokenizerTrainConfig, run_tokenizer_train, ("documents", "mixture"),              False, _nothing),
    Stage("tokenizer_eval",  TokenizerEvalConfig,  run_tokenizer_eval,  ("tokenizers", "documents"),           False, _eval_table),
    Stage("tokenize",        TokenizeConfig,       run_tokenize,        ("documents", "tokenizer", "targets"), True,  _nothing),
    Stage("mixtures_sample", SampleConfig,         run_mixtures_sample, ("tokens",),                           False, _nothing),
    Stage("swarm_train",     SwarmConfig,          run_swarm_train,     ("candidates", "tokens"),              True,  _swarm_summary),
    Stage("mixtures_fit",    FitConfig,            run_mixtures_fit,    ("runs", "candidates", "metrics"),     False, _fit_summary),
    Stage("mixtures_select", SelectConfig,         _select_with_verify, ("fit", "tokens"),                     False, _select_summary),
    Stage("search",          SearchConfig,         _search_with_training, ("tokens",),                         True,  _search_summary),
    Stage("pretrain",        PretrainConfig,       run_pretrain,        ("tokens", "mixture"),                 False, _pretrain_summary),
    Stage("distill",         DistillConfig,        run_distill,         ("teacher", "tokens", "mixture"),      False, _comparison),
    Stage("export_hf",       ExportConfig,         run_export_hf,       ("model",),                            False, _nothing),
    Stage("export_stream",   ExportStreamConfig,   run_export_stream,   ("tokens", "mixture"),                 False, _nothing),
    Stage("report",          ReportConfig,         run_report,          ("run",),                              False, _report_summary),
)}
# fmt: on


def stage_named(text: str, where: str = "stage") -> Stage:
    """The stage `text` names, spelt as in the CLI (`tokenizer train`), YAML or with dashes."""
    name = "_".join(str(text).replace("-", " ").replace("_", " ").split())
    if name not in STAGES:
        raise ConfigError(f"{where}: unknown stage {text!r} (stages: {', '.join(STAGES)})")
    return STAGES[name]
