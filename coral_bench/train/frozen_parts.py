"""The parts of a target that training with stored features reads: its token embedding and LM head.

Training a drafter on a feature store never runs the target's layers (the features are stored), so
loading the whole target wastes its memory: an 8B target is ~32 GB in float32, its embedding and
head ~2 GB. ``load_frozen_parts`` builds the model on the meta device and materialises only those two
tensors from the model's safetensors files; every other weight stays a shapeless meta tensor, and
a forward through the layers fails loudly rather than computing with garbage.

``training_memory`` is the estimate ``coral-bench train`` prints before it starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from coral_bench.core.target import Target
from coral_bench.run.devices import resolve_device
from coral_bench.run.targets import EMBEDDED, TINY, LoadError, _local_model_dir, embedded_model_dir, load_target

_EMBED_KEYS = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "embed_tokens.weight")
_HEAD_KEYS = ("lm_head.weight",)


def load_frozen_parts(name: str, dtype: torch.dtype, device: str | None = None) -> Target:
    """``name``'s embedding and LM head on ``device`` in ``dtype``; the layers left on the meta device.
    The tiny test target has no files and is small: it loads whole."""
    if name == TINY:
        return load_target(name, dtype=str(dtype).removeprefix("torch."), device=device).target
    path = Path(embedded_model_dir() if name == EMBEDDED else _local_model_dir(name))
    dev = resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(path)
        generation = GenerationConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot read target {name!r}: {str(err).splitlines()[0]}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = _read(path, (*_EMBED_KEYS, *_HEAD_KEYS))
    embed = next((tensors[k] for k in _EMBED_KEYS if k in tensors), None)
    if embed is None:
        raise LoadError(f"target {name!r}: no token embedding among {', '.join(_EMBED_KEYS)} in its safetensors")
    model.get_input_embeddings().weight = nn.Parameter(embed.to(dev, dtype), requires_grad=False)
    head = model.get_output_embeddings()
    if getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in tensors:
        head.weight = model.get_input_embeddings().weight
    else:
        head.weight = nn.Parameter(tensors["lm_head.weight"].to(dev, dtype), requires_grad=False)
    if getattr(head, "bias", None) is not None:
        raise LoadError(f"target {name!r} has an LM-head bias: load it whole (--online-features)")
    eos = generation.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    model.generation_config = generation
    return Target(model, eos_ids, name=name)


def _read(folder: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``keys`` from a model folder's safetensors (one file or an index of shards), nothing else."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {k: folder / weight_map[k] for k in keys if k in weight_map}
    elif (folder / "model.safetensors").is_file():
        files = {k: folder / "model.safetensors" for k in keys}
    else:
        raise LoadError(f"{folder} has no safetensors weights (model.safetensors or its index)")
    out: dict[str, torch.Tensor] = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as f:
            present = set(f.keys())
            for key in keys:
                if files.get(key) == file and key in present:
                    out[key] = f.get_tensor(key)
    return out


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training process holds, by part (a rough guide printed before training)."""

    frozen: int  # the target's embedding and head (or the whole target)
    drafter: int  # fp32 master weights, gradients and AdamW's two moments
    logits: int  # one batch's loss logits: rows × loss vocabulary × steps, with their gradients

    @property
    def total(self) -> int:
        return self.frozen + self.drafter + self.logits

    def describe(self) -> str:
        gib = 2 ** 30
        return (f"≈ {self.total / gib:.1f} GiB ({self.frozen / gib:.2f} frozen target parts, {self.drafter / gib:.2f} "
                f"drafter + optimizer, {self.logits / gib:.2f} loss logits per batch; activations of the drafter "
                f"layer extra)")


def training_memory(target: Target, drafter_parameters: int, batch_tokens: int, loss_vocab: int,
                    steps: int) -> MemoryEstimate:
    frozen = sum(p.numel() * p.element_size() for p in target.model.parameters() if p.device.type != "meta")
    vocab = loss_vocab or target.vocab_size
    # logits, log-softmax and their gradients in float32, for the predicted and the target distribution
    return MemoryEstimate(frozen, drafter_parameters * 16, batch_tokens * vocab * 4 * 4 * steps)
