"""A decoder-only transformer of the Llama shape, as a swarm of M independent models.

Every weight carries a leading model dimension M, so one forward/backward pass trains M
models at once with batched matmuls; a single model is simply M = 1. Each member has its
own initialisation seed and its own batch. Member weights convert to and from Hugging Face
Llama names and layout (``member_state_dict``), so an exported member gives the same logits
in ``transformers.LlamaForCausalLM``. Shapes use M (models), B (batch), T (time), C (width),
H (MLP hidden), V (vocab), nh / nkv (query / key-value heads), hd (head size).
The shapes come from `GPTConfig` (in ``config.py``, torch-free so a stage can size a model
without importing torch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mixlab.errors import ConfigError
from mixlab.proxy_models.config import GPTConfig, count_params

# --- building blocks, all batched over the leading model dimension M -----------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (M, N, C) normalised in float32 (as HF Llama does), scaled by weight (M, C)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight[:, None, :] * x.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Batched bias-free linear layer: x (M, N, in) @ weight (M, out, in)^T -> (M, N, out)."""
    return torch.bmm(x, weight.transpose(1, 2))


def rotary_cos_sin(cfg: GPTConfig, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (T, hd) in HF Llama's convention: frequencies repeated over the two halves."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (MB, heads, T, hd) by position; rotate_half pairs dimension i with i + hd/2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _stacked(M: int, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(M, *shape))


class Block(nn.Module):
    """One transformer layer for M models: pre-norm attention and SwiGLU MLP, no biases."""

    def __init__(self, cfg: GPTConfig, M: int):
        super().__init__()
        C, hd, H = cfg.n_embd, cfg.head_dim, cfg.mlp_hidden
        self.cfg = cfg
        self.attn_norm = _stacked(M, C)  # (M, C)
        self.wq = _stacked(M, cfg.n_head * hd, C)  # (M, nh*hd, C)   HF [out, in] layout
        self.wk = _stacked(M, cfg.n_kv_head * hd, C)  # (M, nkv*hd, C)
        self.wv = _stacked(M, cfg.n_kv_head * hd, C)  # (M, nkv*hd, C)
        self.wo = _stacked(M, C, cfg.n_head * hd)  # (M, C, nh*hd)
        self.mlp_norm = _stacked(M, C)  # (M, C)
        self.w_gate = _stacked(M, H, C)  # (M, H, C)
        self.w_up = _stacked(M, H, C)  # (M, H, C)
        self.w_down = _stacked(M, C, H)  # (M, C, H)

    def attention(
        self, x: torch.Tensor, B: int, T: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.cfg
        M, hd = x.shape[0], cfg.head_dim
        # Project per model, then fold M into the batch: attention is independent per sequence.
        q = linear(x, self.wq).view(M * B, T, cfg.n_head, hd).transpose(1, 2)  # (M*B, nh, T, hd)
        k = linear(x, self.wk).view(M * B, T, cfg.n_kv_head, hd).transpose(1, 2)  # (M*B, nkv, T, hd)
        v = linear(x, self.wv).view(M * B, T, cfg.n_kv_head, hd).transpose(1, 2)  # (M*B, nkv, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cfg.n_kv_head != cfg.n_head:  # grouped-query: each kv head serves n_head/n_kv_head query heads
            rep = cfg.n_head // cfg.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (M*B, nh, T, hd)
        y = y.transpose(1, 2).reshape(M, B * T, cfg.n_head * hd)  # (M, B*T, nh*hd)
        return linear(y, self.wo)  # (M, B*T, C)

    def forward(self, x: torch.Tensor, B: int, T: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: (M, B*T, C), the residual stream of every model
        eps = self.cfg.norm_eps
        x = x + self.attention(rms_norm(x, self.attn_norm, eps), B, T, cos, sin)
        h = rms_norm(x, self.mlp_norm, eps)
        h = F.silu(linear(h, self.w_gate)) * linear(h, self.w_up)  # (M, B*T, H)
        return x + linear(h, self.w_down)


class GPT(nn.Module):
    """M independent Llama-shaped models trained in one pass; `seeds[m]` initialises member m.

    A member initialised with seed s is identical whatever M it is packed with, so a swarm
    of M reproduces M separately trained single models.
    """

    def __init__(self, cfg: GPTConfig, seeds: Sequence[int] = (0,)):
        super().__init__()
        if len(seeds) < 1:
            raise ConfigError("GPT: need at least one seed (one model)")
        self.cfg = cfg
        self.seeds = [int(s) for s in seeds]
        M = self.M = len(self.seeds)
        self.wte = _stacked(M, cfg.vocab_size, cfg.n_embd)  # (M, V, C)
        self.blocks = nn.ModuleList(Block(cfg, M) for _ in range(cfg.n_layer))
        self.norm = _stacked(M, cfg.n_embd)  # (M, C)
        # Tied embeddings reuse wte as the output projection; otherwise a separate (M, V, C).
        self.lm_head = None if cfg.tie_embeddings else _stacked(M, cfg.vocab_size, cfg.n_embd)
        # Recompute each block's activations in the backward pass instead of keeping them
        # (memory for compute; the losses and gradients are the same). Set by train.new_swarm.
        self.activation_checkpointing = False
        self.reset_parameters()

    # --- initialisation ---------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Per-member init from its own seed, drawn on the CPU so it does not depend on the device.

        Matrices ~ N(0, 0.02), residual output projections (wo, w_down) scaled by
        1/sqrt(2 n_layer) as in GPT-2; norm weights 1.
        """
        std, out_std = 0.02, 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for m, seed in enumerate(self.seeds):
            gen = torch.Generator().manual_seed(seed)
            for name, p in self.named_parameters():  # fixed order, independent of M
                if p.dim() == 2:  # norm weights (M, C)
                    p[m].fill_(1.0)
                    continue
                s = out_std if name.endswith(("wo", "w_down")) else std
                p[m].copy_(torch.randn(p.shape[1:], generator=gen) * s)

    def compile_blocks(self) -> None:
        """torch.compile every transformer block in place (weights keep their names, so state
        dicts and checkpoints are those of the eager model). One block's code serves them all."""
        for block in self.blocks:
            block.compile()

    # --- forward ----------------------------------------------------------------------------

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (M, B, T) token ids -> final normed hidden states (M, B, T, C).

        Distillation uses this to compute logits in chunks with `logits_from_hidden`.
        """
        M, B, T = idx.shape
        if M != self.M:
            raise ValueError(f"idx has {M} models on its leading dimension, the swarm has {self.M}")
        V, C = self.cfg.vocab_size, self.cfg.n_embd
        # Look up every model's own table at once: offset model m's ids by m * V.
        offsets = (torch.arange(M, device=idx.device) * V).view(M, 1, 1)
        x = F.embedding((idx + offsets).view(M, B * T), self.wte.view(M * V, C))  # (M, B*T, C)
        cos, sin = rotary_cos_sin(self.cfg, T, idx.device)  # (T, hd)
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # keeps only the block's input (M, B*T, C); the rest is redone in backward
                x = checkpoint(block, x, B, T, cos, sin, use_reentrant=False)
            else:
                x = block(x, B, T, cos, sin)
        x = rms_norm(x, self.norm, self.cfg.norm_eps)
        return x.view(M, B, T, C)

    def output_weight(self) -> torch.Tensor:
        """The output projection (M, V, C): wte when embeddings are tied."""
        return self.wte if self.lm_head is None else self.lm_head

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """h (M, B, T, C) (or any slice of T) -> logits (M, B, T, V)."""
        M, B, T, C = h.shape
        return linear(h.reshape(M, B * T, C), self.output_weight()).view(M, B, T, -1)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets (M, B, T) -> logits (M, B, T, V) and per-model mean loss (M,) or None.

        Train on ``loss.sum()``: the models share no weights, so each gets its own gradient.
        """
        logits = self.logits_from_hidden(self.hidden_states(idx))  # (M, B, T, V)
        if targets is None:
            return logits, None
        M, B, T, V = logits.shape
        token_loss = F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1), reduction="none")
        return logits, token_loss.view(M, B * T).mean(dim=1)  # (M,)

    # --- optimisation -----------------------------------------------------------------------

    def configure_optimizer(
        self,
        lr: float,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> torch.optim.AdamW:
        """One AdamW over the stacked weights; decay on matrices (embeddings included), not norms.

        AdamW is elementwise, so one optimiser over (M, ...) tensors is M independent ones.
        """
        decay = [p for p in self.parameters() if p.dim() >= 3]  # (M, out, in) matrices
        no_decay = [p for p in self.parameters() if p.dim() < 3]  # (M, C) norm weights
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if fused is None:
            fused = next(self.parameters()).is_cuda
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)

    @torch.no_grad()
    def clip_grad_norm_per_model(self, max_norm: float) -> torch.Tensor:
        """Clip each member's gradient to `max_norm` on its own; returns the norms before (M,).

        A global norm across the swarm would couple the models, so every norm is per member.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.M)
        sq = torch.stack([g.float().pow(2).flatten(1).sum(dim=1) for g in grads]).sum(dim=0)  # (M,)
        norms = sq.sqrt()
        if max_norm > 0:
            scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # (M,)
            for g in grads:
                g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
        return norms

    # --- sizes ------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters of ONE member; non_embedding leaves out the token embedding and lm_head."""
        return count_params(self.cfg, non_embedding)

    # --- Hugging Face Llama names and layout, one member at a time ---------------------------

    def _hf_names(self) -> Iterable[tuple[str, torch.Tensor]]:
        yield "model.embed_tokens.weight", self.wte
        for i, b in enumerate(self.blocks):
            pre = f"model.layers.{i}."
            yield pre + "input_layernorm.weight", b.attn_norm
            yield pre + "self_attn.q_proj.weight", b.wq
            yield pre + "self_attn.k_proj.weight", b.wk
            yield pre + "self_attn.v_proj.weight", b.wv
            yield pre + "self_attn.o_proj.weight", b.wo
            yield pre + "post_attention_layernorm.weight", b.mlp_norm
            yield pre + "mlp.gate_proj.weight", b.w_gate
            yield pre + "mlp.up_proj.weight", b.w_up
            yield pre + "mlp.down_proj.weight", b.w_down
        yield "model.norm.weight", self.norm
        if self.lm_head is not None:
            yield "lm_head.weight", self.lm_head

    def member_state_dict(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's weights under HF Llama names, [out, in] layout (lm_head omitted when tied)."""
        return {name: p[m].detach().clone().contiguous() for name, p in self._hf_names()}

    @torch.no_grad()
    def load_member_state_dict(self, m: int, state: Mapping[str, torch.Tensor]) -> None:
        """Load HF Llama-named weights into member m; a tied lm_head.weight, if present, is ignored."""
        expected = dict(self._hf_names())
        missing = [k for k in expected if k not in state]
        extra = [
            k for k in state if k not in expected and not (k == "lm_head.weight" and self.lm_head is None)
        ]
        if missing or extra:
            raise ValueError(f"member state dict: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, p in expected.items():
            value = state[name]
            if tuple(value.shape) != tuple(p.shape[1:]):
                raise ValueError(
                    f"member state dict: {name} has shape {tuple(value.shape)}, expected {tuple(p.shape[1:])}"
                )
            p[m].copy_(value.to(p.dtype))
