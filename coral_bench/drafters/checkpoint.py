"""EAGLE / HASS drafter checkpoints: read, validate against a target, write (docs/methods.md §2).

A checkpoint is a folder with ``config.json`` (a one-layer Llama config) and ``model.safetensors``
or ``pytorch_model.bin`` (an fp16 pickle, loaded with ``weights_only=True``). The reference loader
ignores missing and unknown keys silently; here every problem is collected into one
:class:`CheckpointError` that names each missing, unexpected and mis-shaped key.

coral-bench writes bf16 safetensors without the embedding copy, records in ``config.json`` the
target's ``max_position_embeddings`` and a hash of the training target's embedding (checked on
load), and keeps a free-form ``coral_bench`` section (method, settings, provenance).

CORAL routed drafters (docs/methods.md §6) add ``router.*`` tensors (the router and the vocabulary
grouping) and ``vocab.counts`` (training token frequencies), described by the section's ``router``
entry (``router.py``). Reference EAGLE loaders ignore them; here they are validated against the
target and kept in ``EagleCheckpoint.extras``, and a routed checkpoint loads as a plain drafter too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from coral_bench.core.drafter import DrafterError
from .eagle_model import EagleConfig, EagleConfigError, EagleModel
from .router import PREFIX as ROUTER_PREFIX, router_problems
from .vocab_grouping import COUNTS_KEY

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
EMBED_KEY = "embed_tokens.weight"
EMBEDDING_CHOICES = ("target", "checkpoint")
HASH_KEY = "target_embedding_sha256"  # reserved key inside the config's coral_bench section
ROUTER_KEY = "router"  # the coral_bench section's description of the router tensors (router.py)
# Embedding copies may differ from the target by dtype rounding (fp16 ≈ 5e-4, bf16 ≈ 4e-3 relative);
# anything larger means another target (docs/methods.md §2).
EMBED_REL_TOL = 1e-2
# Derived buffers that old transformers versions saved; harmless, ignored.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(DrafterError):
    """A drafter checkpoint that cannot be read or does not fit the target (a ValueError)."""


@dataclass(frozen=True)
class EagleCheckpoint:
    """A validated drafter checkpoint, tensors in the checkpoint's own dtype on the CPU."""

    path: str
    config: EagleConfig
    state: dict[str, torch.Tensor] = field(repr=False)  # EagleModel state dict (embedding excluded)
    embedding: str  # "target" or "checkpoint": whose token embedding the drafter uses
    embed_tokens: torch.Tensor | None = field(repr=False)  # [V, H] the checkpoint's copy, if it has one
    metadata: dict[str, Any]  # the free-form coral_bench section, reserved keys removed
    target_embedding_sha256: str | None  # pairing hash written by coral-bench, if any
    weights_file: str  # the file the tensors came from
    weights_sha256: str | None = None  # of that file's bytes: which weights a run measured
    extras: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # router.* and vocab.counts, validated

    @property
    def router(self) -> dict[str, Any] | None:
        """The router description (``coral_bench.router``) when the checkpoint carries a router."""
        section = self.metadata.get(ROUTER_KEY)
        return section if isinstance(section, dict) and any(k.startswith(ROUTER_PREFIX) for k in self.extras) else None

    def build_model(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> EagleModel:
        model = EagleModel(self.config)
        model.load_state_dict(self.state, strict=True)
        return model.to(device=device, dtype=dtype).eval()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks (shipped and measured weights are named by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embedding_sha256(weight: torch.Tensor) -> str:
    """Hash of a token embedding [V, H], independent of the dtype the target was loaded in.

    Hashes the bf16 rounding of the float32 values (plus the shape): a target loaded in fp32, bf16
    or fp64 from the same weights gives the same hash.
    """
    canon = weight.detach().to("cpu", torch.float32).to(torch.bfloat16).contiguous().view(torch.int16)
    h = hashlib.sha256(f"{tuple(weight.shape)}".encode())
    h.update(canon.numpy().data)
    return h.hexdigest()


# ---- reading ---------------------------------------------------------------------------------
def read_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """config dict, tensors, weights file: no validation beyond readability."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"drafter checkpoint {folder} is not a folder")
    cfg_file = folder / CONFIG_FILE
    try:
        config = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"drafter checkpoint {folder} has no {CONFIG_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{cfg_file}: not a readable JSON config ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    weights = next((folder / n for n in (SAFETENSORS_FILE, BIN_FILE) if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"drafter checkpoint {folder} has neither {SAFETENSORS_FILE} nor {BIN_FILE} "
            f"(found: {sorted(p.name for p in folder.iterdir())})"
        )
    try:
        if weights.name == SAFETENSORS_FILE:
            from safetensors.torch import load_file

            tensors = load_file(str(weights), device="cpu")
        else:
            tensors = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and pickle raise many exception types on bad bytes
        raise CheckpointError(
            f"{weights}: cannot read the weights, the file is truncated or corrupt "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{weights}: expected a flat dict of tensors (a state dict)")
    return config, tensors, weights


def _eagle3_signs(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[str]:
    signs = sorted({k.split(".")[0] + ".*" for k in tensors if k.startswith("midlayer.")})
    signs += [k for k in ("d2t", "t2d") if k in tensors]
    if "draft_vocab_size" in config:
        signs.append("draft_vocab_size in config")
    fc = tensors.get("fc.weight")
    h = config.get("hidden_size")
    if fc is not None and fc.dim() == 2 and h and fc.shape[1] == 3 * int(h):
        signs.append("fc over 3 × hidden features")
    return signs


def load_checkpoint(
    path: str | Path,
    target_embedding: torch.Tensor,  # [V, H] the target's token embedding
    embedding: str = "target",
) -> EagleCheckpoint:
    """Read and validate a drafter checkpoint against the target whose embedding is given.

    Raises one :class:`CheckpointError` naming every problem found: EAGLE-3 files (not supported),
    missing / unexpected / mis-shaped keys, hidden size or vocabulary different from the target,
    an embedding copy that is not the target's, a pairing hash that does not match.
    """
    if embedding not in EMBEDDING_CHOICES:
        raise CheckpointError(f"embedding must be one of {EMBEDDING_CHOICES}, not {embedding!r}")
    config_dict, tensors, weights = read_raw(path)
    where = str(path)

    signs = _eagle3_signs(config_dict, tensors)
    if signs:
        raise CheckpointError(
            f"{where} is an EAGLE-3 checkpoint ({', '.join(signs)}): EAGLE-3 checkpoints are not supported yet"
        )
    layers = config_dict.get("num_hidden_layers", 1)
    if layers != 1:
        raise CheckpointError(f"{where}: num_hidden_layers is {layers}; EAGLE/HASS drafters have exactly 1")
    try:
        config = EagleConfig.from_dict(config_dict)
    except EagleConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None

    vocab, hidden = target_embedding.shape
    problems: list[str] = []
    if config.hidden_size != hidden:
        problems.append(f"hidden size {config.hidden_size} differs from the target's {hidden}")
    if config.vocab_size != vocab:
        problems.append(f"vocabulary {config.vocab_size} differs from the target's {vocab}")

    expected = config.param_shapes()
    present = {k for k in tensors if not k.endswith(_IGNORED_SUFFIXES)}
    extra_keys = {k for k in present if k.startswith(ROUTER_PREFIX) or k == COUNTS_KEY}
    missing = [k for k in expected if k not in present]
    unexpected = sorted(present - set(expected) - {EMBED_KEY} - extra_keys)
    misshaped = [
        f"{k} {tuple(tensors[k].shape)} (expected {v})"
        for k, v in expected.items() if k in tensors and tuple(tensors[k].shape) != v
    ]
    if missing:
        hint = ""
        if "fc.bias" in missing:
            hint = ' (the config lacks "bias": false, so fc has a bias)'
        elif any(k.endswith("_proj.bias") for k in missing):
            hint = " (the config declares q/k/v biases)"
        problems.append(f"missing keys {missing}{hint}")
    if unexpected:
        hint = ""
        if "fc.bias" in unexpected:
            hint = ' (the config says "bias": false)'
        elif any(k.endswith("_proj.bias") for k in unexpected):
            hint = " (the config declares no q/k/v biases: set qkv_bias)"
        problems.append(f"unexpected keys {unexpected}{hint}")
    if misshaped:
        problems.append(f"mis-shaped keys {misshaped}")

    fits_target = not problems  # hidden size and vocabulary agree
    embed = tensors.get(EMBED_KEY)
    if embed is not None and tuple(embed.shape) != tuple(target_embedding.shape):
        problems.append(
            f"{EMBED_KEY} has shape {tuple(embed.shape)}, the target's embedding {tuple(target_embedding.shape)}"
        )
    elif embed is not None:
        rel = embedding_difference(embed, target_embedding)
        if rel > EMBED_REL_TOL:
            problems.append(
                f"{EMBED_KEY} differs from the target's embedding beyond dtype rounding (max relative "
                f"difference {rel:.3g} > {EMBED_REL_TOL}): the drafter was likely trained for a different "
                f"target or target version (e.g. Llama-3 vs Llama-3.1)"
            )
    if embedding == "checkpoint" and embed is None:
        problems.append(f'embedding="checkpoint" but the checkpoint has no {EMBED_KEY}')

    section = config_dict.get("coral_bench") or {}
    if not isinstance(section, dict):
        problems.append("the config's coral_bench section is not an object")
        section = {}
    if ROUTER_KEY in section:
        problems += [f"router: {p}" for p in router_problems(section[ROUTER_KEY], tensors, vocab, hidden)]
    elif any(k.startswith(ROUTER_PREFIX) for k in extra_keys):
        problems.append(f"router tensors {sorted(k for k in extra_keys if k.startswith(ROUTER_PREFIX))} but no "
                        f"coral_bench.{ROUTER_KEY} description in config.json")
    counts = tensors.get(COUNTS_KEY)
    if counts is not None and (tuple(counts.shape) != (vocab,) or counts.is_floating_point()):
        problems.append(f"{COUNTS_KEY} is {tuple(counts.shape)} {counts.dtype}, expected ({vocab},) integer counts "
                        f"for the target's vocabulary")
    stored_hash = section.get(HASH_KEY)
    if stored_hash is not None and fits_target and stored_hash != embedding_sha256(target_embedding):
        problems.append(
            "the drafter was trained with a different target embedding (the pairing hash in config.json "
            "does not match this target): likely another target or target version"
        )

    if problems:
        raise CheckpointError(f"drafter checkpoint {where} does not fit: " + "; ".join(problems))
    state = {k: tensors[k] for k in expected}
    metadata = {k: v for k, v in section.items() if k != HASH_KEY}
    return EagleCheckpoint(
        path=where, config=config, state=state, embedding=embedding, embed_tokens=embed,
        metadata=metadata, target_embedding_sha256=stored_hash, weights_file=weights.name,
        weights_sha256=file_sha256(weights), extras={k: tensors[k] for k in sorted(extra_keys)},
    )


def embedding_difference(a: torch.Tensor, b: torch.Tensor, rows: int = 8192) -> float:
    """Max elementwise |a − b| / |b| in float32, in row chunks (a full fp32 copy of a big vocabulary is large).

    The denominator is floored at 1 % of mean |b| so that near-zero entries do not dominate.
    """
    def chunks(t: torch.Tensor):  # blocks of rows, not a loop over tokens
        for start in range(0, t.shape[0], rows):
            yield t[start : start + rows].detach().to("cpu", torch.float32)

    total = sum(float(bb.abs().sum()) for bb in chunks(b))
    floor = max(total / max(b.numel(), 1) * 1e-2, torch.finfo(torch.float32).tiny)
    worst = 0.0
    for aa, bb in zip(chunks(a), chunks(b)):
        worst = max(worst, float(((aa - bb).abs() / bb.abs().clamp_min(floor)).max()))
    return worst


# ---- writing ---------------------------------------------------------------------------------
def save_checkpoint(
    path: str | Path,
    model: EagleModel,
    target_embedding: torch.Tensor,  # [V, H] the training target's embedding
    max_position_embeddings: int,  # the target's
    metadata: Mapping[str, Any] | None = None,  # method, settings, provenance: free-form JSON
    dtype: torch.dtype = torch.bfloat16,
    include_embedding: bool = False,
    extras: Mapping[str, torch.Tensor] | None = None,  # router.* / vocab.counts tensors, written in their own dtype
) -> Path:
    """Write ``model`` in the EAGLE layout: ``config.json`` + ``model.safetensors`` (bf16 by default).

    The embedding copy is omitted by default (on SmolLM2 it is 57 MB against ~8 MB for the drafter);
    a hash of ``target_embedding`` goes into the config's ``coral_bench`` section instead.
    ``extras`` (a routed drafter's ``router.*`` tensors and ``vocab.counts``) need a ``router``
    description in ``metadata`` when they include router tensors.
    """
    from safetensors.torch import save_file

    metadata = dict(metadata or {})
    if HASH_KEY in metadata:
        raise CheckpointError(f"{HASH_KEY} is reserved in the coral_bench section")
    config = model.config
    if tuple(target_embedding.shape) != (config.vocab_size, config.hidden_size):
        raise CheckpointError(
            f"target embedding {tuple(target_embedding.shape)} does not match the drafter "
            f"(vocab {config.vocab_size}, hidden {config.hidden_size})"
        )
    body = config.to_dict()
    body["max_position_embeddings"] = int(max_position_embeddings)
    body["torch_dtype"] = str(dtype).removeprefix("torch.")
    body["coral_bench"] = {HASH_KEY: embedding_sha256(target_embedding), **metadata}
    try:
        text = json.dumps(body, indent=2, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {err}") from None
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if include_embedding:
        tensors[EMBED_KEY] = target_embedding.detach().to("cpu", dtype).contiguous()
    extras = dict(extras or {})
    odd = sorted(k for k in extras if not (k.startswith(ROUTER_PREFIX) or k == COUNTS_KEY) or k in tensors)
    if odd:
        raise CheckpointError(f"extra checkpoint tensors must be router.* or {COUNTS_KEY} (got {odd})")
    if any(k.startswith(ROUTER_PREFIX) for k in extras) and ROUTER_KEY not in metadata:
        raise CheckpointError(f"router tensors need a {ROUTER_KEY!r} description in the coral_bench metadata")
    tensors.update({k: v.detach().to("cpu").contiguous() for k, v in extras.items()})
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / SAFETENSORS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(text + "\n")
    return folder
