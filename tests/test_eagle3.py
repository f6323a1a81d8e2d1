"""EAGLE-3 drafters: the public checkpoint layouts at their real shapes (built on the meta device, no
download), the speculators layout, one clear line for a checkpoint that does not fit, and hooks that
leave the target as it was. Losslessness with agreeing weights is in tests/test_acceptance.py; with
random weights on Llama and Qwen2 targets in tests/test_decode.py and tests/test_qwen2.py."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from coral_bench.core.clock import Clock
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterError, DrafterSettings, generator_for
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target
from coral_bench.core.tree import TreeShape
from coral_bench.drafters.checkpoint import CheckpointError
from coral_bench.drafters.eagle3_checkpoint import config_problems, save_eagle3_checkpoint
from coral_bench.drafters.eagle3_model import Eagle3Config, Eagle3Model
from coral_bench.drafters.eagle_model import EagleConfig, EagleModel
from coral_bench.drafters.registry import build_drafter
from coral_bench.run.tiny import tiny_model

LAYOUTS = Path(__file__).parent / "fixtures" / "public_layouts"
TREE = TreeShape.parse("top_k=3,depth=3,total_tokens=10")


def _layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def _meta_tensors(shapes: dict) -> dict[str, torch.Tensor]:
    dtypes = {"d2t": torch.long, "t2d": torch.bool}
    return {k: torch.empty(v, device="meta", dtype=dtypes.get(k, torch.float16)) for k, v in shapes.items()}


def _meta_target(config: dict) -> LlamaForCausalLM:
    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**config))


def test_the_public_eagle3_llama31_8b_layout_builds_at_its_real_shape():
    layout = _layout("eagle3-llama3.1-instruct-8b")
    target = _meta_target(layout["target"])
    config = Eagle3Config.from_dict(layout["config"]).with_target(target.config.num_hidden_layers)
    assert config.feature_layers == (2, 16, 29)  # EAGLE-3's low / middle / high layers of a 32-layer target
    assert config.param_shapes() == {k: tuple(v) for k, v in layout["tensors"].items()}
    tensors = _meta_tensors(layout["tensors"])
    assert config_problems(config, tensors) == []
    with torch.device("meta"):
        model = Eagle3Model(config)
    model.load_state_dict(tensors, strict=True, assign=True)  # every key, every shape
    assert tuple(target.model.embed_tokens.weight.shape) == (config.layer.vocab_size, config.target_hidden_size)
    for i in config.feature_layers:
        assert target.model.layers[i].self_attn.q_proj.in_features == config.target_hidden_size


def test_the_public_eagle_llama3_8b_layout_builds_at_its_real_shape():
    layout = _layout("eagle-llama3-instruct-8b")
    target = _meta_target(layout["target"])
    config = EagleConfig.from_dict(layout["config"])
    shapes = {k: tuple(v) for k, v in layout["tensors"].items()}
    embed = shapes.pop("embed_tokens.weight")
    assert config.param_shapes() == shapes
    assert embed == tuple(target.model.embed_tokens.weight.shape)
    with torch.device("meta"):
        model = EagleModel(config)
    model.load_state_dict(_meta_tensors(shapes), strict=True, assign=True)


def test_a_mis_shaped_public_layout_is_named_key_by_key():
    layout = _layout("eagle3-llama3.1-instruct-8b")
    config = Eagle3Config.from_dict(layout["config"]).with_target(32)
    tensors = _meta_tensors(layout["tensors"])
    tensors["lm_head.weight"] = torch.empty(16000, 4096, device="meta")
    del tensors["midlayer.hidden_norm.weight"]
    tensors["d2t"] = torch.empty(32000, device="meta")
    problems = config_problems(config, tensors)
    assert any("missing keys ['midlayer.hidden_norm.weight']" in p for p in problems)
    assert any("lm_head.weight (16000, 4096) (expected (32000, 4096))" in p for p in problems)
    assert any("d2t is torch.float32, expected integer" in p for p in problems)


@pytest.fixture(scope="module")
def target():
    return Target(tiny_model(seed=0, dtype=torch.float64), (2,), name="tiny64")


def _random_eagle3(target: Target, draft_vocab: int = 100) -> Eagle3Model:
    body = target.model.config.to_dict() | {"num_hidden_layers": 1, "draft_vocab_size": draft_vocab}
    model = Eagle3Model(Eagle3Config.from_dict(body).with_target(target.num_layers)).to(torch.float64)
    model.init_random(torch.Generator().manual_seed(7), target.vocab_size)
    with torch.no_grad():  # a draft vocabulary that is not the first ids: d2t offsets matter
        ids = torch.arange(target.vocab_size - draft_vocab, target.vocab_size)
        model.d2t.copy_(ids - torch.arange(draft_vocab))
        model.t2d.zero_()
        model.t2d[ids] = True
    return model


def _decode(target, name, prompt, checkpoint=None):
    drafter = build_drafter(target, DrafterSettings(name, TREE, checkpoint=checkpoint))
    return generate(target, drafter, prompt, 24, SamplingConfig(), generator_for(0), Clock(torch.device("cpu")),
                    reserve=TREE.max_nodes), drafter


def test_the_speculators_layout_loads_as_the_flat_one(target, tmp_path):
    """vLLM speculators: layers.0.* keys and the layer config nested under transformer_layer_config."""
    model = _random_eagle3(target)
    flat = save_eagle3_checkpoint(tmp_path / "flat", model, dtype=torch.float64)
    nested = tmp_path / "speculators"
    nested.mkdir()
    from safetensors.torch import load_file, save_file

    tensors = {k.replace("midlayer.", "layers.0."): v for k, v in load_file(str(flat / "model.safetensors")).items()}
    save_file(tensors, str(nested / "model.safetensors"))
    config = json.loads((flat / "config.json").read_text())
    top = {k: config.pop(k) for k in ("draft_vocab_size", "target_hidden_size", "norm_before_residual")}
    (nested / "config.json").write_text(json.dumps({"speculators_model_type": "eagle3", **top,
                                                    "transformer_layer_config": config}))
    prompt = list(range(5, 40))
    a, da = _decode(target, "eagle3", prompt, str(flat))
    b, db = _decode(target, "eagle3", prompt, str(nested))
    van, _ = _decode(target, "vanilla", prompt)
    assert a.ids == b.ids == van.ids
    assert [c.accepted for c in a.cycles] == [c.accepted for c in b.cycles]
    assert da.info.head == db.info.head and da.info.head["draft_vocab_size"] == 100


def test_a_checkpoint_that_does_not_fit_is_one_clear_line(target, tmp_path):
    other = Target(tiny_model(seed=0, dtype=torch.float64, vocab_size=400), (2,), name="tiny-400")
    folder = save_eagle3_checkpoint(tmp_path / "e3", _random_eagle3(other), dtype=torch.float64)
    with pytest.raises(CheckpointError) as err:
        build_drafter(target, DrafterSettings("eagle3", TREE, checkpoint=str(folder)))
    message = str(err.value)
    assert "\n" not in message and "does not fit" in message and "vocabulary 400 differs" in message
    with pytest.raises(CheckpointError, match="is an EAGLE-3 checkpoint"):  # EAGLE-3 files given to eagle2
        build_drafter(other, DrafterSettings("eagle2", TREE, checkpoint=str(folder)))
    with pytest.raises(DrafterError, match="@vocab shapes random weights"):
        build_drafter(other, DrafterSettings("eagle3", TREE, checkpoint=f"{folder}@vocab=10"))


def test_an_eagle1_checkpoint_is_not_taken_for_eagle3(target, tmp_path):
    from coral_bench.drafters.checkpoint import save_checkpoint
    from coral_bench.train.loop import drafter_config

    folder = save_checkpoint(tmp_path / "e1", EagleModel(drafter_config(target)), target.embedding_weight(),
                             target.max_context)
    with pytest.raises(CheckpointError, match="not an EAGLE-3 checkpoint .* load it as eagle2"):
        build_drafter(target, DrafterSettings("eagle3", TREE, checkpoint=str(folder)))


def test_the_layer_hooks_go_with_the_drafter(target):
    layers = target.model.model.layers
    before = [len(layer._forward_pre_hooks) for layer in layers]
    drafter = build_drafter(target, DrafterSettings("eagle3", TREE, checkpoint="random@vocab=50"))
    assert sum(len(layer._forward_pre_hooks) for layer in layers) == sum(before) + 3
    del drafter
    gc.collect()
    assert [len(layer._forward_pre_hooks) for layer in layers] == before


def _hub_cache(root: Path, repo: str, source: Path) -> Path:
    """A local Hugging Face cache holding ``source``'s files as the snapshot of ``repo``."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    return snapshot


def test_a_drafter_is_named_by_its_hugging_face_id_through_the_local_cache(target, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = save_eagle3_checkpoint(tmp_path / "e3", _random_eagle3(target), dtype=torch.float64)
    snapshot = _hub_cache(tmp_path / "hub", "someorg/EAGLE3-tiny", saved)
    monkeypatch.chdir(tmp_path)  # "someorg/EAGLE3-tiny" is no folder here
    drafter = build_drafter(target, DrafterSettings("eagle3", TREE, checkpoint="someorg/EAGLE3-tiny"))
    assert Path(drafter.info.checkpoint) == snapshot
    with pytest.raises(DrafterError) as err:
        build_drafter(target, DrafterSettings("eagle3", TREE, checkpoint="someorg/not-downloaded"))
    assert "\n" not in str(err.value)
    assert "neither a folder here nor a model in the local Hugging Face cache" in str(err.value)
    assert "huggingface-cli download someorg/not-downloaded" in str(err.value)
