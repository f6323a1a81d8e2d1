"""EAGLE/HASS checkpoints: reference-layout fixtures, coral-bench round trip, every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coral_bench.core.drafter import DrafterError, DrafterSettings
from coral_bench.drafters.checkpoint import (
    CheckpointError, embedding_sha256, load_checkpoint, read_raw, save_checkpoint,
)
from coral_bench.drafters.eagle import build_eagle
from coral_bench.drafters.eagle_model import EagleConfig, EagleModel
from coral_bench.run.tiny import tiny_model
from coral_bench.core.tree import TreeShape

H, V = 64, 320  # the tiny target


def reference_config(**overrides) -> dict:
    """A config.json as the EAGLE/HASS training scripts write it (one-layer Llama config)."""
    cfg = {
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": H, "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 2048,
        "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 1, "num_key_value_heads": 2,
        "pretraining_tp": 1, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.28.1",
        "use_cache": True, "vocab_size": V,
    }
    cfg.update(overrides)
    return cfg


def reference_state(cfg: dict, embedding: torch.Tensor | None, seed: int = 0) -> dict[str, torch.Tensor]:
    model = EagleModel(EagleConfig.from_dict(cfg))
    model.init_random(torch.Generator().manual_seed(seed))
    state = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
    if embedding is not None:
        state["embed_tokens.weight"] = embedding.to(torch.float16)
    return state


def write_reference(folder: Path, cfg: dict, state: dict, fmt: str = "bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def emb(target64) -> torch.Tensor:  # [V, H] float64
    return target64.embedding_weight().detach()


# ---- reference layout -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("variant", [
    {},  # Llama-2 era: fc bias (config lacks "bias")
    {"bias": False},  # Llama-3 era
    {"bias": False, "qkv_bias": True},  # Qwen2 drafter, declared
    {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},  # Qwen2, implied q/k/v biases
])
def test_reference_layout_loads(tmp_path, target64, emb, fmt, variant):
    cfg = reference_config(**variant)
    state = reference_state(cfg, emb)
    folder = write_reference(tmp_path / "ckpt", cfg, state, fmt)
    ckpt = load_checkpoint(folder, emb)
    assert ckpt.embedding == "target"
    assert ("fc.bias" in ckpt.state) == variant.get("bias", True)
    assert ("layers.0.self_attn.q_proj.bias" in ckpt.state) == ("qkv_bias" in variant or "model_type" in variant)
    assert "embed_tokens.weight" not in ckpt.state and ckpt.embed_tokens is not None
    for k, v in ckpt.state.items():
        assert torch.equal(v, state[k])

    drafter = build_eagle(target64, DrafterSettings("eagle2", TreeShape.parse("chain:2"), checkpoint=str(folder)))
    assert drafter.info.checkpoint == str(folder) and drafter.info.embedding == "target"
    for k, v in drafter.model.state_dict().items():
        assert v.dtype == torch.float64 and torch.equal(v, state[k].double())


def test_embedding_choice_checkpoint(tmp_path, target64, emb):
    cfg = reference_config(bias=False)
    folder = write_reference(tmp_path / "c", cfg, reference_state(cfg, emb), "safetensors")
    settings = DrafterSettings("eagle2", TreeShape.parse("chain:2"), checkpoint=str(folder), embedding="checkpoint")
    drafter = build_eagle(target64, settings)
    assert drafter.info.embedding == "checkpoint"
    ids = torch.tensor([3, 7, 300])
    torch.testing.assert_close(drafter._embed(ids), emb.to(torch.float16).double()[ids], rtol=0, atol=0)
    # Without a copy in the file, "checkpoint" is refused.
    folder2 = write_reference(tmp_path / "d", cfg, reference_state(cfg, None), "safetensors")
    with pytest.raises(CheckpointError, match="no embed_tokens"):
        load_checkpoint(folder2, emb, embedding="checkpoint")
    with pytest.raises(CheckpointError, match="embedding must be"):
        load_checkpoint(folder2, emb, embedding="mine")


def test_old_rotary_buffer_is_ignored(tmp_path, emb):
    cfg = reference_config()
    state = reference_state(cfg, None)
    state["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    ckpt = load_checkpoint(write_reference(tmp_path / "c", cfg, state), emb)
    assert "layers.0.self_attn.rotary_emb.inv_freq" not in ckpt.state  # a buffer of old EAGLE code, not a weight
    assert ckpt.state.keys() == reference_state(cfg, None).keys()


# ---- coral-bench round trip ---------------------------------------------------------------------
def test_round_trip(tmp_path, target64, emb):
    config = EagleConfig.from_dict(reference_config(bias=False, qkv_bias=True))
    model = EagleModel(config)
    model.init_random(torch.Generator().manual_seed(4))
    meta = {"method": "coral", "settings": {"csra_tau": 0.07, "steps": [1, 2, 3]},
            "provenance": {"git": "abc123", "data": "sharegpt:1000"}}
    folder = save_checkpoint(tmp_path / "out", model, emb, max_position_embeddings=target64.max_context,
                             metadata=meta)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    raw_cfg, tensors, _ = read_raw(folder)
    assert "embed_tokens.weight" not in tensors
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert raw_cfg["max_position_embeddings"] == target64.max_context
    assert raw_cfg["num_hidden_layers"] == 1 and raw_cfg["bias"] is False and raw_cfg["qkv_bias"] is True

    ckpt = load_checkpoint(folder, emb)
    assert ckpt.metadata == meta
    assert ckpt.target_embedding_sha256 == embedding_sha256(emb)
    assert ckpt.config == config
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state[k], v.to(torch.bfloat16))

    # With the embedding copy: still loads, and either embedding can be chosen.
    folder2 = save_checkpoint(tmp_path / "out2", model, emb, target64.max_context, include_embedding=True)
    assert load_checkpoint(folder2, emb, embedding="checkpoint").embed_tokens.dtype == torch.bfloat16


def test_embedding_hash_ignores_dtype_and_catches_another_target(tmp_path, emb):
    assert embedding_sha256(emb) == embedding_sha256(emb.float())
    other = tiny_model(seed=1, dtype=torch.float64).get_input_embeddings().weight.detach()
    assert embedding_sha256(other) != embedding_sha256(emb)
    model = EagleModel(EagleConfig.from_dict(reference_config()))
    folder = save_checkpoint(tmp_path / "c", model, emb, 2048)
    with pytest.raises(CheckpointError, match="different target embedding"):
        load_checkpoint(folder, other)


def test_save_refuses_bad_metadata(tmp_path, emb):
    model = EagleModel(EagleConfig.from_dict(reference_config()))
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "c", model, emb, 2048, metadata={"when": object()})
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "c", model, emb, 2048, metadata={"target_embedding_sha256": "x"})


# ---- refusals -----------------------------------------------------------------------------------
def test_missing_unexpected_misshaped_in_one_message(tmp_path, emb):
    cfg = reference_config(bias=False)
    state = reference_state(cfg, None)
    del state["layers.0.mlp.up_proj.weight"]
    state["layers.0.input_layernorm.weight"] = torch.ones(H, dtype=torch.float16)
    state["fc.weight"] = torch.zeros(H, H, dtype=torch.float16)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(write_reference(tmp_path / "c", cfg, state), emb)
    msg = str(err.value)
    assert "missing keys ['layers.0.mlp.up_proj.weight']" in msg
    assert "unexpected keys ['layers.0.input_layernorm.weight']" in msg
    assert "mis-shaped keys ['fc.weight (64, 64) (expected (64, 128))']" in msg
    assert isinstance(err.value, DrafterError) and isinstance(err.value, ValueError)


def test_bias_declarations_are_honoured(tmp_path, emb):
    # fc.bias present but the config says "bias": false.
    state = reference_state(reference_config(), None)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['fc.bias'\].*bias"):
        load_checkpoint(write_reference(tmp_path / "a", reference_config(bias=False), state), emb)
    # q/k/v biases in the file, none declared.
    state = reference_state(reference_config(qkv_bias=True), None)
    with pytest.raises(CheckpointError, match="qkv_bias"):
        load_checkpoint(write_reference(tmp_path / "b", reference_config(), state), emb)


def test_hidden_size_and_vocab_mismatch(tmp_path, emb):
    cfg = reference_config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)
    with pytest.raises(CheckpointError, match="hidden size 32 differs from the target's 64"):
        load_checkpoint(write_reference(tmp_path / "a", cfg, reference_state(cfg, None)), emb)
    cfg = reference_config(vocab_size=500)
    with pytest.raises(CheckpointError, match="vocabulary 500 differs from the target's 320"):
        load_checkpoint(write_reference(tmp_path / "b", cfg, reference_state(cfg, None)), emb)


def test_embedding_mismatch(tmp_path, emb):
    cfg = reference_config()
    state = reference_state(cfg, None)
    state["embed_tokens.weight"] = torch.zeros(V + 1, H, dtype=torch.float16)
    with pytest.raises(CheckpointError, match="embed_tokens.weight has shape"):
        load_checkpoint(write_reference(tmp_path / "a", cfg, state), emb)
    perturbed = emb * (1 + 0.05 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0), dtype=emb.dtype))
    state["embed_tokens.weight"] = perturbed.to(torch.float16)
    with pytest.raises(CheckpointError, match="different target or target version"):
        load_checkpoint(write_reference(tmp_path / "b", cfg, state), emb)
    state["embed_tokens.weight"] = emb.to(torch.bfloat16)  # rounding only: accepted
    load_checkpoint(write_reference(tmp_path / "c", cfg, state, "safetensors"), emb)


def test_eagle3_is_refused(tmp_path, emb):
    cfg = reference_config(draft_vocab_size=32, bias=False)
    state = {
        "fc.weight": torch.zeros(H, 3 * H, dtype=torch.float16),
        "midlayer.self_attn.q_proj.weight": torch.zeros(H, 2 * H, dtype=torch.float16),
        "midlayer.hidden_norm.weight": torch.ones(H, dtype=torch.float16),
        "norm.weight": torch.ones(H, dtype=torch.float16),
        "lm_head.weight": torch.zeros(32, H, dtype=torch.float16),
        "d2t": torch.zeros(32, dtype=torch.int64),
        "t2d": torch.zeros(V, dtype=torch.bool),
    }
    with pytest.raises(CheckpointError, match="EAGLE-3 checkpoints are not supported yet"):
        load_checkpoint(write_reference(tmp_path / "c", cfg, state, "safetensors"), emb)


def test_unreadable_checkpoints(tmp_path, emb):
    cfg = reference_config()
    good = write_reference(tmp_path / "good", cfg, reference_state(cfg, None), "safetensors")
    blob = (good / "model.safetensors").read_bytes()

    trunc = write_reference(tmp_path / "trunc", cfg, {}, "safetensors")
    (trunc / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc, emb)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text(json.dumps(cfg))
    (garbage / "pytorch_model.bin").write_bytes(b"this is not a pickle" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage, emb)

    (garbage / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(garbage, emb)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(empty, emb)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_checkpoint(tmp_path / "nowhere", emb)


def test_unsupported_configs(tmp_path, emb):
    cfg = reference_config(num_hidden_layers=2)
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        load_checkpoint(write_reference(tmp_path / "a", cfg, reference_state(reference_config(), None)), emb)
    cfg = reference_config(rope_scaling={"type": "dynamic", "factor": 2.0})
    with pytest.raises(CheckpointError, match="dynamic"):
        load_checkpoint(write_reference(tmp_path / "b", cfg, reference_state(reference_config(), None)), emb)


def test_a_name_alone_uses_the_shipped_drafter_or_fails_clearly(tmp_path, target64, emb, monkeypatch):
    from coral_bench.drafters.registry import build_drafter
    from coral_bench.drafters.shipped import ASSETS_ENV

    monkeypatch.setenv(ASSETS_ENV, str(tmp_path / "assets"))
    shape = TreeShape.parse("chain:2")
    with pytest.raises(DrafterError, match=r"coral needs a checkpoint .*no coral drafter is shipped for target tiny64"):
        build_drafter(target64, DrafterSettings("coral", shape))
    cfg = reference_config(bias=False)
    state = reference_state(cfg, emb)
    folder = write_reference(tmp_path / "assets" / "tiny64" / "hass", cfg, state, "safetensors")
    drafter = build_drafter(target64, DrafterSettings("hass", shape))
    assert drafter.info.checkpoint == str(folder)
    for k, v in drafter.model.state_dict().items():
        assert torch.equal(v, state[k].double())
    with pytest.raises(DrafterError, match=r"shipped: hass"):
        build_drafter(target64, DrafterSettings("eagle2", shape))
    random = build_drafter(target64, DrafterSettings("coral", shape, checkpoint="random"))  # explicit: allowed
    assert random.info.checkpoint in (None, "random")
