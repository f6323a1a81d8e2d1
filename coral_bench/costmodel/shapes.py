"""Real model shapes without weights: the drafter (and optionally the target) of a 7–8B model.

Latency does not depend on weight values, so ``coral-bench profile --shape NAME --random-weights``
builds an EAGLE drafter of a real target's shape on the meta device, materialises it directly in the
working dtype and fills it with cheap random numbers (no slow module init), then profiles it
(docs/methods.md §6–7; CORAL's Figure 2: drafter parameters fc + layer vs LM head, and the LM head's share
of drafting time).

The configs are copied from the public model configs (``config.json`` of each repository):
hidden, intermediate, heads, key/value heads, vocabulary, RoPE theta, context; Qwen2 has q/k/v
biases. ``drafter_bias`` is the fc bias of the published EAGLE drafter for that target (EAGLE's
Llama-2 drafters keep the default bias; the Llama-3 ones declare ``"bias": false``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from coral_bench.drafters.eagle_model import EagleConfig, EagleModel, rope_inv_freq


class ShapeError(ValueError):
    """An unknown shape name or an unreadable config file."""


@dataclass(frozen=True)
class ModelShape:
    """A target's architecture (an HF config body) and the fc bias of its EAGLE drafter."""

    name: str
    config: Mapping[str, Any] = field(repr=False)  # HF config.json body (model_type, sizes, rope_theta, …)
    drafter_bias: bool = True
    source: str = ""

    def drafter_config(self) -> EagleConfig:
        return EagleConfig.from_dict({**self.config, "bias": self.drafter_bias})

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])


def _llama(**sizes: Any) -> dict[str, Any]:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
            "tie_word_embeddings": False, "attention_bias": False, **sizes}


# Public configs: meta-llama/Llama-2-7b-chat-hf, meta-llama/Meta-Llama-3-8B-Instruct, Qwen/Qwen2.5-7B-Instruct.
SHAPES: Mapping[str, ModelShape] = MappingProxyType({
    "llama2-7b": ModelShape("llama2-7b", _llama(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
        num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0, bos_token_id=1, eos_token_id=2), drafter_bias=True,
        source="meta-llama/Llama-2-7b-chat-hf config.json"),
    "llama3-8b": ModelShape("llama3-8b", _llama(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        num_hidden_layers=32, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, bos_token_id=128000, eos_token_id=128009), drafter_bias=False,
        source="meta-llama/Meta-Llama-3-8B-Instruct config.json"),
    "qwen2.5-7b": ModelShape("qwen2.5-7b", {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
        "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
        "num_hidden_layers": 28, "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "use_sliding_window": False,
        "bos_token_id": 151643, "eos_token_id": 151645}, drafter_bias=True,
        source="Qwen/Qwen2.5-7B-Instruct config.json (q/k/v biases: model_type qwen2)"),
})


def load_shape(name_or_path: str) -> ModelShape:
    """A shipped shape name, or a path to an HF ``config.json`` (a target's or an EAGLE drafter's)."""
    if name_or_path in SHAPES:
        return SHAPES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ShapeError(f"unknown shape {name_or_path!r}: choose from {', '.join(SHAPES)} or give a config.json path")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShapeError(f"cannot read {path}: {err}") from None
    if not isinstance(cfg, dict) or "hidden_size" not in cfg or "vocab_size" not in cfg:
        raise ShapeError(f"{path} is not a model config (needs hidden_size and vocab_size)")
    return ModelShape(path.stem if path.stem != "config" else path.parent.name or "config", cfg,
                      drafter_bias=bool(cfg.get("bias", True)), source=str(path))


# ---- materialising random weights ------------------------------------------------------------


def _fill_random(module: nn.Module, generator: torch.Generator) -> None:
    """Norm weights 1, biases 0, matrices N(0, 1/fan_in): realistic magnitudes (no NaNs or denormals,
    which would change CPU latency), drawn in the working dtype (no float32 copy of 8B weights)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() < 2:
                p.fill_(1.0 if "norm" in name else 0.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]), generator=generator)


def random_drafter(config: EagleConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> EagleModel:
    """An EAGLE drafter of ``config``'s shape, built on the meta device and materialised in ``dtype``."""
    with torch.device("meta"):
        model = EagleModel(config).to(dtype)
    model = model.to_empty(device=device)
    _fill_random(model, torch.Generator(device=device).manual_seed(seed))
    with torch.no_grad():  # the RoPE buffer is derived, not a weight: recompute it (as build_eagle's .to(dtype) gives)
        model.inv_freq.copy_(rope_inv_freq(config))
    return model.eval()


def random_head(config: EagleConfig, dtype: torch.dtype, device: torch.device, seed: int = 1) -> nn.Linear:
    """The target's LM head [V, H] (the drafter borrows it), random; also serves as the token embedding."""
    with torch.device("meta"):
        head = nn.Linear(config.hidden_size, config.vocab_size, bias=False).to(dtype)
    head = head.to_empty(device=device)
    _fill_random(head, torch.Generator(device=device).manual_seed(seed))
    return head.eval()


def target_bytes(shape: ModelShape, dtype: torch.dtype) -> int:
    """Weight bytes of the whole target (what ``random_target`` allocates)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**dict(shape.config)), dtype=dtype)
    return sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8


def random_target(shape: ModelShape, dtype: torch.dtype, device: torch.device, seed: int = 2):
    """The whole target with random weights (meta device → ``dtype`` on ``device``); an HF causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.for_model(**dict(shape.config))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device=device)
    _fill_random(model, torch.Generator(device=device).manual_seed(seed))
    _restore_rotary(model, config, device)
    eos = config.eos_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos if isinstance(eos, int) else eos[0])
    return model.eval()


def _restore_rotary(model: nn.Module, config, device: torch.device) -> None:
    """RoPE frequencies are buffers, left uninitialised by ``to_empty``: copy them from a fresh module."""
    rotary = model.base_model.rotary_emb
    fresh = type(rotary)(config=config).to(device)
    with torch.no_grad():
        for name, buf in fresh.named_buffers():
            rotary.get_buffer(name).copy_(buf)


def memory_available() -> int | None:
    """Bytes of memory available (``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---- the profile pass on a shape (docs/methods.md §6; CORAL's Figure 2) ------------------------------


def shape_harness(shape: ModelShape, dtype: torch.dtype, device: torch.device, top_k: int):
    """A random-weight EAGLE drafter of ``shape`` with a random LM head (also used as the embedding)."""
    import torch.nn.functional as F

    from coral_bench.costmodel.forwards import DraftHarness

    config = shape.drafter_config()
    model = random_drafter(config, dtype, device)
    head = random_head(config, dtype, device)
    promote = torch.promote_types(dtype, torch.float32)  # as Target.logits_from_features
    return DraftHarness(model, lambda ids: F.embedding(ids, head.weight), head, lambda f: head(f).to(promote), top_k)


def profile_shape(shape: ModelShape, dtype: torch.dtype, device: torch.device, tree, settings,
                  with_target: bool = False):
    """The drafter of ``shape`` (fc + layer, LM head, log-softmax + top-k, no-op loop) at one first-forward
    row (the shares of docs/methods.md §1 without a run); the whole target too with ``with_target``, where
    memory allows. Returns a ``profile.ProfileReport``."""
    from transformers import AutoConfig

    from coral_bench.costmodel import profile as pf
    from coral_bench.core.clock import load_average
    from coral_bench.core.event_clock import clock_for
    from coral_bench.costmodel.forwards import forward_costs
    from coral_bench.costmodel.noop import eos_ids, noop_loop, synthetic_plans
    from coral_bench.costmodel.speedup import DrafterCosts
    from coral_bench.core.target import Target

    load_before, clock = load_average(), clock_for(device)
    gen = torch.Generator().manual_seed(settings.seed)
    h = shape_harness(shape, dtype, device, 1 if tree.kind == "chain" else min(tree.top_k, shape.vocab_size))
    forward, regions = forward_costs(h, tree, settings, clock, gen, first_rows=(1,))
    params = h.model.parameter_count()
    del h  # free the drafter before a target is built
    hf_config = AutoConfig.for_model(**dict(shape.config))
    plans = synthetic_plans(tree, settings.prompts[len(settings.prompts) // 2], 64)
    loop = noop_loop(hf_config, dtype, device, "eagle", tree, plans, clock, settings.noop_cycles, settings.seed)
    method = pf.MethodProfile(shape.name, "eagle", tree, DrafterCosts(forward, loop), regions, params,
                              shape.vocab_size * shape.hidden_size, 1.0)
    target_costs, target_regions = None, ()
    if with_target:
        need, have = target_bytes(shape, dtype), memory_available()
        if device.type == "cpu" and have is not None and need > 0.8 * have:
            raise ShapeError(f"the {shape.name} target needs {need / 2**30:.1f} GiB in {dtype}, "
                             f"{have / 2**30:.1f} GiB are available: profile the drafter only")
        target = Target(random_target(shape, dtype, device), eos_ids(hf_config), name=shape.name)
        target_costs, target_regions = pf.profile_target(target, settings, clock, (1, tree.max_nodes))
    env = pf.environment(device, dtype, load_before) | {"source": shape.source, "weights": "random"}
    return pf.ProfileReport(shape.name, target_costs, target_regions, (method,), settings, env)


def profile_shapes(names, dtype: str | None, device: str | None, threads: int | None, tree, settings,
                   with_target: bool = False) -> list:
    """``profile_shape`` for each shape name or config path (default tree: the CPU default of EAGLE drafters)."""
    from coral_bench.run.devices import resolve_device, resolve_dtype
    from coral_bench.drafters.registry import CPU_TREE

    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    torch_dtype, _ = resolve_dtype(dtype, dev)
    shapes = [load_shape(n) for n in names]  # fail on a bad name before building anything
    return [profile_shape(s, torch_dtype, dev, tree or CPU_TREE, settings, with_target) for s in shapes]
