"""MixtureStream: pretrain's exact data, one global order whatever the ranks and workers, exact
resume; `mixlab export stream` writes that stream as a flat .bin and parquet shards."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from mixlab.data import MixtureStream
from mixlab.errors import ConfigError, InputError
from mixlab.proxy_models.data import MixtureLoader

_spec = importlib.util.spec_from_file_location(
    "proxy_conftest", Path(__file__).parent / "proxy_models" / "conftest.py"
)
_tokens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tokens)  # the tiny tokenize outputs of the proxy-model tests

WEIGHTS = {"alpha": 0.5, "beta": 0.3, "gamma": 0.2}


@pytest.fixture
def tokens(tmp_path: Path, make_tokens) -> Path:
    streams = {
        d: {"train": _tokens.domain_tokens(k, 3000, 0), "valid": _tokens.domain_tokens(k, 600, 1)}
        for k, d in enumerate(WEIGHTS)
    }
    return make_tokens(tmp_path / "tokens", streams)


@pytest.fixture
def mixture(tmp_path: Path) -> Path:
    path = tmp_path / "mixture.json"
    path.write_text(json.dumps({"weights": WEIGHTS}))
    return path


def take(stream, n: int) -> list[torch.Tensor]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_the_stream_is_pretrains_data_for_the_chosen_model(tokens, mixture):
    loader = MixtureLoader(tokens, WEIGHTS, 16, 8, 3, "pretrain/chosen")
    stream = MixtureStream(tokens, mixture, 16, 8, seed=3)
    for batch in take(stream, 5):
        assert torch.equal(batch, torch.from_numpy(loader.next_batch()))
    assert stream.epochs() == loader.epochs()


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_take_slices_of_the_same_global_batches(tokens, mixture, world):
    whole = take(MixtureStream(tokens, mixture, 16, 8, rank=0, world_size=1), 4)
    parts = [take(MixtureStream(tokens, mixture, 16, 8, rank=r, world_size=world), 4) for r in range(world)]
    for k in range(4):
        assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])


def test_dataloader_workers_keep_the_global_order(tokens, mixture):
    whole = take(MixtureStream(tokens, mixture, 16, 8, batches=6), 6)
    loaded = list(
        DataLoader(MixtureStream(tokens, mixture, 16, 8, batches=6), batch_size=None, num_workers=2)
    )
    assert len(loaded) == 6 and all(torch.equal(a, b) for a, b in zip(loaded, whole))


def test_a_state_dict_resumes_exactly_on_another_number_of_ranks(tokens, mixture):
    whole = take(MixtureStream(tokens, mixture, 16, 8), 7)
    first = MixtureStream(tokens, mixture, 16, 8, rank=1, world_size=2)
    take(first, 3)
    state = first.state_dict()
    assert state["batches"] == 3
    again = MixtureStream(tokens, mixture, 16, 8, rank=0, world_size=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(again, 4), whole[3:]))
    # As DataLoader workers would: the state after n batches, from the count alone.
    counted = MixtureStream(tokens, mixture, 16, 8).state_dict(batches=3)
    assert counted["rng"] == state["rng"] and counted["tokens"] == state["tokens"]


def test_epochs_count_every_domains_tokens_of_the_global_stream(tokens, mixture):
    stream = MixtureStream(tokens, mixture, 16, 8, rank=1, world_size=2)
    take(stream, 10)
    tokens_seen = {d: e * 3000 for d, e in stream.epochs().items()}
    assert sum(tokens_seen.values()) == pytest.approx(10 * 8 * 16)


def test_examples_are_single_sequences_for_hugging_face_trainers(tokens, mixture):
    first = next(iter(MixtureStream(tokens, mixture, 16, 8, examples=True)))
    batch = take(MixtureStream(tokens, mixture, 16, 8), 1)[0]
    assert torch.equal(first["input_ids"], batch[0]) and torch.equal(first["labels"], batch[0])


def test_a_batch_the_world_size_does_not_divide_is_one_clear_error(tokens, mixture):
    with pytest.raises(ConfigError, match="--batch-size 6: not divisible by the world size 4"):
        MixtureStream(tokens, mixture, 16, 6, rank=0, world_size=4)


def test_a_mixture_naming_a_domain_the_tokens_lack_is_refused(tokens):
    with pytest.raises(InputError, match="not in the tokens"):
        MixtureStream(tokens, {"alpha": 0.5, "missing": 0.5}, 16, 8)


def test_a_state_of_another_stream_is_refused(tokens, mixture):
    state = MixtureStream(tokens, mixture, 16, 8, seed=1).state_dict()
    with pytest.raises(ConfigError, match="another stream"):
        MixtureStream(tokens, mixture, 16, 8, seed=2).load_state_dict(state)


# The README's plain torch loop, run as written (the test checks README.md shows exactly this).
README_LOOP = """\
import torch
from torch.utils.data import DataLoader
from mixlab.data import MixtureStream

stream = MixtureStream(tokens, "mixture.json", seq_len=128, batch_size=16, batches=steps)
for step, batch in enumerate(DataLoader(stream, batch_size=None, num_workers=2)):  # (16 / world, 129)
    logits = model(batch[:, :-1])  # your model: (B, T, vocab) logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)  # your schedule
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    log(step, loss.item())
    if step % 1000 == 0:  # the stream's place is a small dict: a resume continues it exactly
        torch.save({"model": model.state_dict(), "data": stream.state_dict(batches=step + 1)}, "ckpt.pt")
"""


def test_the_readmes_plain_torch_loop_reproduces_pretrains_loss_curve(tokens, mixture, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from mixlab.proxy_models.config import PretrainConfig
    from mixlab.proxy_models.data import run_init_seed
    from mixlab.proxy_models.model import GPT
    from mixlab.proxy_models.pretrain import plan_pretrain, run_pretrain
    from mixlab.proxy_models.train import lr_at

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert README_LOOP in readme, "README.md's plain torch loop differs from the one this test runs"
    # pretrain's defaults (seq_len 128, batch 16, grad clip 1.0) with a tiny model, evaluated every step.
    cfg = PretrainConfig(n_layer=1, n_head=2, n_embd=32, steps=6, warmup_steps=2, lr=3e-3, eval_every=1,
                         eval_sequences=2, device="cpu", threads=1)  # fmt: skip
    run_pretrain({"tokens": tokens, "mixture": mixture}, cfg, tmp_path / "pre")
    rows = pq.read_table(tmp_path / "pre" / "metrics.parquet").to_pylist()

    class Model(torch.nn.Module):  # mixlab's GPT (one member) with pretrain's initial weights
        def __init__(self) -> None:
            super().__init__()
            model_cfg = plan_pretrain(tokens, mixture, cfg).model
            self.gpt = GPT(model_cfg, seeds=[run_init_seed(cfg.seed, "pretrain")])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gpt(x.unsqueeze(0))[0][0]  # (B, T, V)

    model = Model()
    losses: list[float] = []
    monkeypatch.chdir(tmp_path)  # where mixture.json is
    namespace = {
        "tokens": tokens,
        "steps": cfg.steps,
        "model": model,
        "optimizer": model.gpt.configure_optimizer(cfg.lr, cfg.weight_decay),
        "lr_at": lambda step: lr_at(step, cfg.recipe),
        "log": lambda step, loss: losses.append(loss),
    }
    exec(README_LOOP, namespace)

    assert [r["step"] for r in rows] == list(range(1, cfg.steps + 1))
    np.testing.assert_allclose(losses, [r["train_loss"] for r in rows], rtol=1e-5, atol=1e-6)
    saved = load_file(tmp_path / "pre" / "model.safetensors")
    for name, value in model.gpt.member_state_dict(0).items():
        torch.testing.assert_close(value, saved[name], rtol=1e-4, atol=1e-5)
    assert torch.load(tmp_path / "ckpt.pt")["data"]["batches"] == 1


def test_exported_bin_read_with_memmap_is_exactly_the_stream(tokens, mixture, tmp_path, cli):
    out = tmp_path / "stream"
    result = cli(
        "export", "stream", "--tokens", tokens, "--mixture", mixture, "--tokens-total", 1000,
        "--seq-len", 16, "--batch-size", 8, "--rows-per-shard", 20, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "stream.json").read_text())
    assert meta["dtype"] == "uint16" and meta["shape"] == [59, 17]  # ceil(1000 / 17) sequences
    data = np.memmap(out / "stream.bin", dtype=meta["dtype"], mode="r").reshape(-1, 17)
    expected = torch.cat(take(MixtureStream(tokens, mixture, 16, 8), 8))[:59].numpy()
    assert np.array_equal(data, expected)
    table = pq.read_table(out / "sequences")
    assert table.num_rows == 59 and len(list((out / "sequences").glob("shard_*.parquet"))) == 3
    assert np.array_equal(np.array(table.column("tokens").to_pylist()), expected)
    assert set(table.column("domain").to_pylist()) <= set(WEIGHTS)


def test_export_stream_refuses_a_mixture_domain_the_tokens_lack(tokens, tmp_path, cli):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"alpha": 0.5, "missing": 0.5}))
    result = cli(
        "export",
        "stream",
        "--tokens",
        tokens,
        "--mixture",
        bad,
        "--tokens-total",
        100,
        "--out",
        tmp_path / "o",
    )
    assert result.exit_code != 0 and "not in the tokens" in result.output
    assert not (tmp_path / "o").exists()
