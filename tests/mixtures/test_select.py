"""`mixtures select`: simulation, constraints, pruned scoring and the chosen mixture."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from mixlab.errors import ConfigError
from mixlab.mixtures.config import FitConfig, SelectConfig
from mixlab.mixtures.fit import load_fit, run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import Bounds, kl_from_prior, run_mixtures_select, simulate_mixtures
from mixlab.tables import write_table

DOMAINS = ["prose", "code", "tabular", "legal"]
SAMPLER = {"prior_power": 1.0, "spread_min": 0.1, "spread_max": 5.0, "spread_levels": 15, "min_weight": 0.01}


@pytest.fixture(scope="module")
def blend_fit(tmp_path_factory):
    """A fit of the known law on a target drawn from prose 0.7 + code 0.3 (loss.target)."""
    root = tmp_path_factory.mktemp("blend")
    write_table(
        known_runs(160, target_blend={"prose": 0.7, "code": 0.3}, noise=0.01, seed=11), root / "runs.parquet"
    )
    run_mixtures_fit(
        {"runs": root / "runs.parquet"},
        FitConfig(target="target", max_rounds=400, learning_rate=0.03),
        root / "fit",
    )
    return root / "fit"


def test_simulated_mixtures_are_on_the_simplex_and_centre_on_the_prior():
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    w = simulate_mixtures(prior, 20_000, SAMPLER, np.random.default_rng(0))
    assert w.shape == (20_000, 4)
    assert np.allclose(w.sum(axis=1), 1.0) and (w >= 0).all()
    assert not ((w > 0) & (w < 0.01)).any()  # small weights floored to zero, like the candidates
    assert np.allclose(w.mean(axis=0), prior, atol=0.02)
    again = simulate_mixtures(prior, 20_000, SAMPLER, np.random.default_rng(0))
    assert np.array_equal(w, again)


def test_projection_lands_in_the_box_and_leaves_feasible_mixtures_alone():
    bounds = Bounds(np.array([0.1, 0.0, 0.0, 0.05]), np.array([0.5, 0.3, 1.0, 1.0]), None)
    w = simulate_mixtures(np.full(4, 0.25), 5_000, SAMPLER, np.random.default_rng(1))
    p = bounds.project(w)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert bounds.feasible(p).all()
    ok = bounds.feasible(w)
    assert ok.any() and np.array_equal(p[ok], w[ok])
    assert np.allclose(bounds.project(p), p)


def test_pruned_scoring_finds_exactly_the_brute_force_best(blend_fit):
    fitted = load_fit(blend_fit)
    w = simulate_mixtures(fitted.prior, 30_000, SAMPLER, np.random.default_rng(2))
    full = fitted.final.predict(w)
    rows, scores = fitted.final.predict_lowest(w, 64)
    assert set(np.argsort(full)[:64]) <= set(rows)
    assert np.allclose(np.sort(scores)[:64], np.sort(full)[:64])
    assert len(rows) < len(w)


def test_known_blend_target_puts_its_weight_on_the_blended_domains(blend_fit, tmp_path):
    run_mixtures_select({"fit": blend_fit}, SelectConfig(samples=50_000), tmp_path / "sel")
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    weights = mixture["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["prose"] + weights["code"] >= 0.8
    assert mixture["predicted_target_loss"] < mixture["natural"]["predicted_target_loss"]
    assert mixture["predicted_target_loss"] < mixture["uniform"]["predicted_target_loss"]
    spread = mixture["spread"]
    assert len(spread["folds"]) == 5 and spread["min"] <= spread["mean"] <= spread["max"]
    assert mixture["method"]["name"] == "topk" and mixture["method"]["top_k"] == 128
    assert mixture["target"]["terms"] == {"target": 1.0}
    assert (tmp_path / "sel" / "weights_vs_prior.png").read_bytes()[:4] == b"\x89PNG"


def test_near_prior_optimisation_stays_within_max_kl(blend_fit, tmp_path):
    run_mixtures_select(
        {"fit": blend_fit}, SelectConfig(samples=20_000, method="near-prior", max_kl=0.1), tmp_path / "sel"
    )
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    assert mixture["kl_from_prior"] <= 0.1 + 1e-9
    assert mixture["predicted_target_loss"] <= mixture["natural"]["predicted_target_loss"]
    assert "topk" in mixture["alternatives"]
    fit = json.loads((blend_fit / "fit.json").read_text())
    prior = np.array([fit["prior"][d] for d in DOMAINS])
    chosen = np.array([mixture["weights"][d] for d in DOMAINS])
    assert kl_from_prior(chosen, prior) == pytest.approx(mixture["kl_from_prior"])


def test_token_budget_and_max_epochs_cap_each_domain(blend_fit, tmp_path):
    counts = tmp_path / "token_counts.parquet"
    write_table(
        pa.table(
            {
                "domain": DOMAINS + DOMAINS,
                "split": ["train"] * 4 + ["valid"] * 4,
                "documents": [1] * 8,
                "tokens": [1_000, 5_000, 5_000, 5_000, 99, 99, 99, 99],
            }
        ),
        counts,
    )
    cfg = SelectConfig(samples=20_000, token_budget=10_000, max_epochs=2.0, min_weight={"legal": 0.05})
    run_mixtures_select({"fit": blend_fit, "tokens": counts}, cfg, tmp_path / "sel")
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    assert mixture["weights"]["prose"] <= 0.2 + 1e-9  # 1,000 tokens x 2 epochs / 10,000
    assert mixture["weights"]["legal"] >= 0.05 - 1e-9
    assert max(mixture["constraints"]["epochs"].values()) <= 2.0 + 1e-6
    assert mixture["feasible"]
    assert mixture["natural"]["feasible"] == (mixture["natural"]["weights"]["prose"] <= 0.2)


def test_impossible_constraints_are_refused_with_the_reason(blend_fit, tmp_path):
    counts = tmp_path / "token_counts.parquet"
    write_table(
        pa.table({"domain": DOMAINS, "split": ["train"] * 4, "documents": [1] * 4, "tokens": [100] * 4}),
        counts,
    )
    with pytest.raises(ConfigError, match="no mixture fits.*raise --max-epochs"):
        run_mixtures_select(
            {"fit": blend_fit, "tokens": counts},
            SelectConfig(samples=1000, token_budget=10_000),
            tmp_path / "sel",
        )
    with pytest.raises(ConfigError, match="unknown domain"):
        run_mixtures_select(
            {"fit": blend_fit}, SelectConfig(samples=1000, max_weight={"news": 0.2}), tmp_path / "sel"
        )
    with pytest.raises(ConfigError, match="--token-budget: pass --tokens"):
        run_mixtures_select({"fit": blend_fit}, SelectConfig(samples=1000, token_budget=5), tmp_path / "sel")
    with pytest.raises(ConfigError, match="minimums sum"):
        run_mixtures_select(
            {"fit": blend_fit},
            SelectConfig(samples=1000, min_weight={"code": 0.6, "prose": 0.6}),
            tmp_path / "sel",
        )
    assert not (tmp_path / "sel").exists()


def test_select_with_a_baseline_model(blend_fit, tmp_path):
    run_mixtures_select({"fit": blend_fit}, SelectConfig(samples=5_000, model="loglinear"), tmp_path / "sel")
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    assert mixture["method"]["model"] == "loglinear"
    assert mixture["predicted_target_loss"] < mixture["natural"]["predicted_target_loss"]
    assert mixture["held_out"] == {
        k: json.loads((blend_fit / "fit.json").read_text())["models"]["loglinear"][k]
        for k in ("spearman", "pearson", "rmse")
    }


def _tokens_dir(path):
    """A tokenize output as select's --verify check sees it (the trainer itself is the hook's business)."""
    from mixlab.stage import run_stage

    def body(stage):
        rows = {"domain": DOMAINS, "split": ["train"] * 4, "documents": [1] * 4, "tokens": [10_000] * 4}
        write_table(pa.table(rows), stage.out / "token_counts.parquet")
        return {}, {"vocab_size": 100, "eos_id": 0}

    run_stage("tokenize", {}, {}, path, body)
    return path


def predictions_as_measurements(calls, verdict="better"):
    """A verify hook that trains nothing: it "measures" every mixture as its prediction.

    Only select's plumbing is under test here (what the hook is given and what select does with
    its record); the real trainer, mixlab.proxy_models.verify.verify_mixtures, has its own tests.
    """

    def verify(tokens, mixtures, predicted, *, target, swarm_config, scale, seeds):
        calls.append(
            {
                "tokens": tokens,
                "mixtures": mixtures,
                "predicted": predicted,
                "target": target,
                "swarm_config": swarm_config,
                "scale": scale,
                "seeds": seeds,
            }
        )
        order = sorted(mixtures, key=predicted.get)
        return {
            "scale": scale,
            "seeds": len(seeds),
            "mixtures": {
                n: {"predicted": p, "measured": p, "measured_std": None} for n, p in predicted.items()
            },
            "predicted_order": order,
            "measured_order": order,
            "ordering_holds": True,
            "comparisons": {
                n: {"gap": predicted[n] - predicted["chosen"], "stderr": None, "verdict": verdict}
                for n in mixtures
                if n != "chosen"
            },
            "chosen_beats_baselines": verdict == "better",
        }

    return verify


def test_verify_hands_the_three_mixtures_the_target_and_the_config_seeds_to_the_hook(blend_fit, tmp_path):
    from mixlab.mixture import Target

    calls = []
    tokens = _tokens_dir(tmp_path / "tokens")
    cfg = SelectConfig(samples=5_000, verify=True, verify_seeds=2, verify_scale=1.5, seed=5)
    manifest = run_mixtures_select(
        {"fit": blend_fit, "tokens": tokens}, cfg, tmp_path / "sel", verify=predictions_as_measurements(calls)
    )
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    fit = json.loads((blend_fit / "fit.json").read_text())
    (call,) = calls
    assert call["tokens"] == tokens.absolute()
    assert call["seeds"] == [1005, 1006]  # cfg.seed + 1000 + s: the same for every mixture
    assert call["scale"] == 1.5 and call["swarm_config"] == fit["swarm_config"]
    assert call["target"] == Target.from_record(fit["target"], None)
    assert set(call["mixtures"]) == {"chosen", "natural", "uniform"}
    for name, weights in call["mixtures"].items():
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
        entry = mixture if name == "chosen" else mixture[name]
        assert weights == pytest.approx(entry["weights"], abs=1e-12)
        assert call["predicted"][name] == entry["predicted_target_loss"]
    assert mixture["verification"]["comparisons"]["natural"]["verdict"] == "better"
    assert manifest.stats["verification"]["ordering_holds"] is True
    assert mixture["warnings"] == []


def test_a_chosen_mixture_measured_worse_by_the_hook_is_a_warning(blend_fit, tmp_path):
    cfg = SelectConfig(samples=5_000, verify=True, verify_seeds=1)
    verify = predictions_as_measurements([], verdict="worse")
    run_mixtures_select(
        {"fit": blend_fit, "tokens": _tokens_dir(tmp_path / "t")}, cfg, tmp_path / "s", verify=verify
    )
    mixture = json.loads((tmp_path / "s" / "mixture.json").read_text())
    assert mixture["warnings"] == [
        "at the larger proxy size the chosen mixture measured worse than natural, uniform"
    ]


def test_verify_without_a_verify_function_is_refused_naming_the_flag(blend_fit, tmp_path):
    tokens = _tokens_dir(tmp_path / "tokens")
    with pytest.raises(ConfigError, match="--verify: .*verify_mixtures"):
        run_mixtures_select(
            {"fit": blend_fit, "tokens": tokens}, SelectConfig(samples=1000, verify=True), tmp_path / "s"
        )
    assert not (tmp_path / "s").exists()


def test_mixture_json_is_what_pretrain_reads_back(blend_fit, tmp_path):
    from mixlab.mixture import Mixture

    manifest = run_mixtures_select(
        {"fit": blend_fit, "tokens": None}, SelectConfig(samples=5_000), tmp_path / "sel"
    )
    assert manifest.stage == "mixtures_select"
    mixture = Mixture.read(tmp_path / "sel" / "mixture.json", DOMAINS)
    fit = json.loads((blend_fit / "fit.json").read_text())
    assert mixture.weights == manifest.stats["weights"]
    assert mixture.target == fit["target"] == {"spec": "target", "terms": {"target": 1.0}}
    assert mixture.noise_floor == (fit["noise_floor"]["rmse"] if fit["noise_floor"] else None)


def test_a_min_weight_without_a_domain_names_the_flag_once(cli, blend_fit, tmp_path):
    result = cli("mixtures", "select", blend_fit, "--min-weight", "0.5", "--out", tmp_path / "sel")
    assert result.exit_code == 1
    assert "--min-weight: expected name=value pairs" in result.output
    assert "----min-weight" not in result.output
