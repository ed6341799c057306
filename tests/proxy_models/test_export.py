"""`mixlab export hf`: transformers loads the export and gives mixlab's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixlab.errors import InputError
from mixlab.proxy_models.checkpoint import load_model, save_model
from mixlab.proxy_models.config import ExportConfig, GPTConfig
from mixlab.proxy_models.export import run_export_hf
from mixlab.proxy_models.model import GPT

VOCAB = 64


def make_model_dir(out: Path, tokenizer: Path | None, tied: bool = True) -> Path:
    cfg = GPTConfig(
        vocab_size=VOCAB, seq_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=tied
    )
    model = GPT(cfg, seeds=(3,))
    with torch.no_grad():  # move norms away from 1 so a mis-mapped norm would show in the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.linspace(0.5, 1.5, p.shape[-1]))
    save_model(out, model, 0, {"stage": "pretrain", "eos_id": 0}, tokenizer)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_in_transformers_with_the_same_logits(
    tokens_with_tokenizer: Path, tmp_path: Path, tied: bool, cli
) -> None:
    transformers = pytest.importorskip("transformers")
    src = make_model_dir(tmp_path / "model", tokens_with_tokenizer / "tokenizer", tied)
    result = cli("export", "hf", src, "--out", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    out = tmp_path / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == 0

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours, _ = load_model(src)
    idx = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(idx.unsqueeze(0))[0][0]  # (B, T, V)
        got = hf(idx).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == 0 and len(tokenizer) == VOCAB


def test_export_round_trips_through_an_exported_directory(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "model", None, tied=False)
    run_export_hf({"model": src}, ExportConfig(), tmp_path / "hf")
    again, meta = load_model(tmp_path / "hf")  # an export is itself a loadable checkpoint
    ours, _ = load_model(src)
    assert meta["model_type"] == "llama"
    for name, value in ours.member_state_dict(0).items():
        torch.testing.assert_close(again.member_state_dict(0)[name], value)


def test_bfloat16_export_stores_bfloat16_weights(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "model", None)
    run_export_hf({"model": src}, ExportConfig(dtype="bfloat16"), tmp_path / "hf_bf16")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "hf_bf16" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in weights.values())
    assert json.loads((tmp_path / "hf_bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_exporting_something_that_is_not_a_checkpoint_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{broken")
    with pytest.raises(InputError, match="corrupt config"):
        run_export_hf({"model": tmp_path / "junk"}, ExportConfig(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
