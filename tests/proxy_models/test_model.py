"""The swarm model: M members behave as M separate models; HF Llama layout; config checks."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import ConfigError
from mixlab.proxy_models.config import GPTConfig, count_params
from mixlab.proxy_models.model import GPT

TINY = GPTConfig(vocab_size=97, seq_len=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=False)


def _batches(M: int, steps: int, B: int = 3, T: int = 16, V: int = 97) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (steps, M, B, T + 1), generator=gen)


@pytest.mark.parametrize("tied", [False, True])
def test_swarm_of_m_matches_m_separately_trained_models_step_for_step(tied: bool) -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(**{**TINY.to_dict(), "tie_embeddings": tied})
    seeds = [3, 11, 5]
    steps, data = 4, _batches(len(seeds), 4)
    swarm = GPT(cfg, seeds)
    opt = swarm.configure_optimizer(lr=1e-2, weight_decay=0.1)
    swarm_losses = []
    for s in range(steps):
        _, loss = swarm(data[s, :, :, :-1], data[s, :, :, 1:])
        opt.zero_grad()
        loss.sum().backward()
        swarm.clip_grad_norm_per_model(0.5)  # small: clipping is active and must stay per model
        opt.step()
        swarm_losses.append(loss.detach())
    for m, seed in enumerate(seeds):
        single = GPT(cfg, [seed])
        opt1 = single.configure_optimizer(lr=1e-2, weight_decay=0.1)
        for s in range(steps):
            _, loss = single(data[s, m : m + 1, :, :-1], data[s, m : m + 1, :, 1:])
            opt1.zero_grad()
            loss.sum().backward()
            single.clip_grad_norm_per_model(0.5)
            opt1.step()
            torch.testing.assert_close(loss.detach()[0], swarm_losses[s][m], rtol=1e-5, atol=1e-5)
        for name, p in single.member_state_dict(0).items():
            torch.testing.assert_close(p, swarm.member_state_dict(m)[name], rtol=1e-4, atol=1e-5)


def test_members_with_different_seeds_differ_and_same_seed_is_identical() -> None:
    swarm = GPT(TINY, [1, 2, 1])
    assert not torch.equal(swarm.wte[0], swarm.wte[1])
    assert torch.equal(swarm.blocks[1].w_up[0], swarm.blocks[1].w_up[2])


def test_clipping_is_per_model_not_a_global_norm() -> None:
    swarm = GPT(TINY, [0, 1])
    for p in swarm.parameters():
        p.grad = torch.zeros_like(p)
    swarm.wte.grad[0].fill_(10.0)  # member 0 has a huge gradient
    swarm.wte.grad[1, 0, 0] = 0.1  # member 1 a tiny one
    norms = swarm.clip_grad_norm_per_model(1.0)
    assert norms[0] > 1.0 and norms[1] == pytest.approx(0.1)
    assert swarm.wte.grad[1, 0, 0].item() == pytest.approx(0.1)  # untouched by member 0's norm
    assert swarm.wte.grad[0].norm().item() == pytest.approx(1.0, rel=1e-4)


def test_member_state_dict_round_trips_with_hf_names() -> None:
    src, dst = GPT(TINY, [4, 5]), GPT(TINY, [6])
    sd = src.member_state_dict(1)
    assert "model.layers.1.self_attn.k_proj.weight" in sd and "lm_head.weight" in sd
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)  # [out, in]
    assert sd["model.layers.0.mlp.down_proj.weight"].shape == (32, TINY.mlp_hidden)
    dst.load_member_state_dict(0, sd)
    idx = torch.randint(0, 97, (1, 2, 16))
    torch.testing.assert_close(dst(idx)[0][0], src(idx.expand(2, -1, -1))[0][1])


@pytest.mark.parametrize("tied", [False, True])
def test_exported_member_gives_the_same_logits_in_transformers_llama(tied: bool) -> None:
    transformers = pytest.importorskip("transformers")
    from mixlab.proxy_models.modeldir import hf_llama_config

    cfg = GPTConfig(**{**TINY.to_dict(), "tie_embeddings": tied})
    swarm = GPT(cfg, [7, 8]).eval()
    hf_cfg = transformers.LlamaConfig(**hf_llama_config(cfg))
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(swarm.member_state_dict(1), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if tied:
        hf.tie_weights()
    idx = torch.randint(0, 97, (1, 2, 16))
    with torch.no_grad():
        ours = swarm(idx.expand(2, -1, -1))[0][1]
        theirs = hf(input_ids=idx[0]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_param_count_matches_the_module() -> None:
    model = GPT(TINY, [0])
    assert count_params(TINY) == sum(p[0].numel() for p in model.parameters())
    assert model.num_params(non_embedding=True) == count_params(TINY) - 2 * 97 * 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, "divisible by n_head"),
        ({"n_head": 4, "n_kv_head": 3}, "divisible by n_kv_head"),
        ({"n_embd": 12, "n_head": 4}, "must be even"),
        ({"n_layer": 0}, "n_layer must be at least 1"),
    ],
)
def test_model_config_sizes_that_do_not_divide_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**kwargs)
