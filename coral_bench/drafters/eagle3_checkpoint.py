"""EAGLE-3 drafter checkpoints: read and validate against a target (docs/methods.md §2, "EAGLE-3").

The public layout (EAGLE-3's own releases, SpecForge): ``config.json`` (a one-layer Llama config with
``draft_vocab_size`` and, optionally, ``target_hidden_size``, ``eagle_config.eagle_aux_hidden_state_layer_ids``)
and ``model.safetensors`` or ``pytorch_model.bin`` with ``fc``, ``midlayer.*``, ``norm``, ``lm_head``,
``d2t``, ``t2d`` (and sometimes ``embed_tokens.weight``). vLLM's speculators layout (``layers.0.*``
keys, a nested ``transformer_layer_config``) is read too. Every problem found goes into one
:class:`~coral_bench.drafters.checkpoint.CheckpointError` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint import EMBED_REL_TOL, CheckpointError, embedding_difference, file_sha256, read_raw
from .eagle3_model import EMBED_KEY, Eagle3Config, Eagle3Model
from .eagle_model import EagleConfigError

_ALIASES = (("layers.0.", "midlayer."), ("model.layers.0.", "midlayer."), ("model.", ""))
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Eagle3Checkpoint:
    """A validated EAGLE-3 checkpoint, tensors in their own dtype on the CPU."""

    path: str
    config: Eagle3Config  # feature layers resolved for the target
    state: dict[str, torch.Tensor] = field(repr=False)
    embed_tokens: torch.Tensor | None = field(repr=False)  # [V, H] the checkpoint's own, if any
    uses_own_embedding: bool  # True when the drafter is narrower than the target
    weights_sha256: str | None = None

    def build_model(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Eagle3Model:
        model = Eagle3Model(self.config)
        model.load_state_dict(self.state, strict=True)
        return model.to(device=device, dtype=dtype).eval()  # floating tensors only: d2t / t2d keep their dtypes


def is_eagle3(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether a checkpoint is in an EAGLE-3 layout rather than EAGLE-1/2/HASS's."""
    return (any(k.startswith("midlayer.") for k in tensors) or "d2t" in tensors or "draft_vocab_size" in config
            or "transformer_layer_config" in config)


def canonical_keys(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys in EAGLE-3's own naming (``midlayer.*``), whatever layout wrote them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        for old, new in _ALIASES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def config_problems(config: Eagle3Config, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``tensors`` for ``config`` (empty: it fits)."""
    expected = config.param_shapes()
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(set(tensors) - set(expected) - {EMBED_KEY})
    misshaped = [f"{k} {tuple(tensors[k].shape)} (expected {v})" for k, v in expected.items()
                 if k in tensors and tuple(tensors[k].shape) != v]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys {misshaped}")
    for key, want in (("d2t", "integer"), ("t2d", "boolean")):
        t = tensors.get(key)
        if t is not None and (t.is_floating_point() or (want == "boolean") != (t.dtype == torch.bool)):
            problems.append(f"{key} is {t.dtype}, expected {want}")
    return problems


def load_eagle3_checkpoint(path: str | Path, target_embedding: torch.Tensor, target_layers: int,
                           target_config: Mapping[str, Any]) -> Eagle3Checkpoint:
    """Read ``path`` and check it against the target (embedding [V, H_t], layer count, config dict)."""
    config_dict, raw, weights = read_raw(path)
    where = str(path)
    if not is_eagle3(config_dict, raw):
        raise CheckpointError(f"{where} is not an EAGLE-3 checkpoint (no midlayer.* keys, d2t or draft_vocab_size): "
                              "load it as eagle2")
    tensors = canonical_keys(raw)
    try:
        rope = {"rope_theta": float(target_config["rope_theta"])} if config_dict.get("rope_theta") is None \
            and target_config.get("rope_theta") is not None else {}
        config = Eagle3Config.from_dict(config_dict, **rope).with_target(target_layers)
    except EagleConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    vocab, hidden = target_embedding.shape
    problems = config_problems(config, tensors)
    if config.layer.vocab_size != vocab:
        problems.append(f"vocabulary {config.layer.vocab_size} differs from the target's {vocab}")
    if config.target_hidden_size != hidden:
        problems.append(f"its features are {config.target_hidden_size} wide, the target's hidden size is {hidden}")
    own = config.layer.hidden_size != hidden
    embed = tensors.get(EMBED_KEY)
    if own and embed is None:
        problems.append(f"the drafter is {config.layer.hidden_size} wide, not the target's {hidden}, and carries no "
                        f"{EMBED_KEY} of its own")
    elif embed is not None and tuple(embed.shape) != (vocab, config.layer.hidden_size):
        problems.append(f"{EMBED_KEY} has shape {tuple(embed.shape)}, expected {(vocab, config.layer.hidden_size)}")
    elif embed is not None and not own:
        rel = embedding_difference(embed, target_embedding)
        if rel > EMBED_REL_TOL:
            problems.append(f"{EMBED_KEY} differs from the target's embedding beyond dtype rounding (max relative "
                            f"difference {rel:.3g}): the drafter was likely trained for another target")
    d2t = tensors.get("d2t")
    if not problems and d2t is not None:
        ids = torch.arange(config.draft_vocab_size) + d2t.long()
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            problems.append(f"d2t maps draft ids outside the target's vocabulary of {vocab}")
    if problems:
        raise CheckpointError(f"EAGLE-3 checkpoint {where} does not fit: " + "; ".join(problems))
    state = {k: tensors[k] for k in config.param_shapes()}
    return Eagle3Checkpoint(where, config, state, embed, own, file_sha256(weights))


def save_eagle3_checkpoint(path: str | Path, model: Eagle3Model, extra_config: Mapping[str, Any] | None = None,
                           dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``model`` in EAGLE-3's public layout (flat ``config.json``, ``model.safetensors`` with
    ``midlayer.*`` keys, ``d2t`` int64, ``t2d`` bool), readable by EAGLE-3's and vLLM's loaders."""
    import json

    from safetensors.torch import save_file

    from .checkpoint import CONFIG_FILE, SAFETENSORS_FILE

    config = model.config
    body = config.layer.to_dict() | {"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size":
                                     config.draft_vocab_size, "target_hidden_size": config.target_hidden_size,
                                     "norm_before_residual": config.norm_before_residual}
    body.pop("bias", None)
    body["attention_bias"] = body.pop("qkv_bias")
    if config.feature_layers:
        body["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(config.feature_layers)}
    body |= dict(extra_config or {})
    tensors = {k: (v if k in ("d2t", "t2d") else v.to(dtype)).detach().to("cpu").contiguous()
               for k, v in model.state_dict().items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / SAFETENSORS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(body, indent=2) + "\n")
    return folder
