"""The EAGLE-3 drafter network and its own draft head (docs/methods.md §2, "EAGLE-3").

EAGLE-3 differs from the EAGLE/HASS drafter (``eagle_model.py``) in four ways:

- its real features are three target layers' hidden states concatenated, ``[3·H_t]``, that ``fc``
  (no bias) maps to the drafter's width; a self-predicted feature (deeper in the tree) is the
  drafter's own pre-norm output and skips ``fc``;
- its one decoder layer (``midlayer``) normalises the token embedding (``input_layernorm``) and the
  feature (``hidden_norm``) separately and attends over their concatenation, so q/k/v take ``2·H``;
  the residual is the un-normalised feature (``norm_before_residual``: the normalised one);
- a final ``norm`` and its own ``lm_head`` over a reduced draft vocabulary of ``draft_vocab_size``
  tokens; ``d2t`` maps draft id i to target id ``i + d2t[i]``, ``t2d`` marks the target tokens drafted;
- the token embedding is the target's, unless the drafter is narrower than the target
  (``target_hidden_size``), when the checkpoint carries its own ``embed_tokens.weight``.

State-dict keys equal the public checkpoints' (``fc.weight``, ``midlayer.self_attn.q_proj.weight``, …,
``norm.weight``, ``lm_head.weight``, ``d2t``, ``t2d``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .draft_heads import HeadTop
from .eagle_model import (EagleAttention, EagleConfig, EagleConfigError, EagleMLP, EagleModel, EagleOutput, RMSNorm,
                          rope_inv_freq)

EMBED_KEY = "embed_tokens.weight"


def default_feature_layers(target_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low / middle / high choice: the inputs of layers 2, L/2 and L−3 (vLLM's ids), kept
    inside the target for targets of fewer than 6 layers (tests' tiny models)."""
    last = target_layers - 1
    return (min(2, last), target_layers // 2, max(0, min(target_layers - 3, last)))


@dataclass(frozen=True)
class Eagle3Config:
    """Shape of an EAGLE-3 drafter: the Llama-style layer shape plus what EAGLE-3 adds."""

    layer: EagleConfig  # hidden size, heads, RoPE… of the midlayer (its vocab_size = the target's)
    draft_vocab_size: int
    target_hidden_size: int  # width of each of the three target features
    feature_layers: tuple[int, ...] | None = None  # decoder-layer inputs to read; None: the default for the target
    norm_before_residual: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the config as read

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], **overrides: Any) -> "Eagle3Config":
        """Read an EAGLE-3 config.json: the flat EAGLE-3 / SpecForge form, or the speculators form
        (``transformer_layer_config`` + top-level EAGLE-3 fields). ``overrides`` go to the layer config."""
        flat = dict(cfg.get("transformer_layer_config") or {}) | {k: v for k, v in cfg.items()
                                                                 if k != "transformer_layer_config"}
        if flat.get("rope_theta") is None and "rope_theta" in overrides:
            flat.pop("rope_theta", None)  # published EAGLE-3 configs may leave it null: the target's
        layers = int(flat.get("num_hidden_layers", 1))
        if layers != 1:
            raise EagleConfigError(f"num_hidden_layers is {layers}; EAGLE-3 drafters have exactly 1")
        layer = EagleConfig.from_dict(flat, fc_bias=False, **overrides)
        eagle = flat.get("eagle_config") or {}
        ids = eagle.get("eagle_aux_hidden_state_layer_ids", flat.get("eagle_aux_hidden_state_layer_ids"))
        try:
            return cls(layer=layer, draft_vocab_size=int(flat.get("draft_vocab_size") or layer.vocab_size),
                       target_hidden_size=int(flat.get("target_hidden_size") or layer.hidden_size),
                       feature_layers=tuple(int(i) for i in ids) if ids else None,
                       norm_before_residual=bool(flat.get("norm_before_residual", False)), raw=dict(cfg))
        except (TypeError, ValueError) as err:
            raise EagleConfigError(f"EAGLE-3 config has a bad value: {err}") from None

    def with_target(self, target_layers: int) -> "Eagle3Config":
        """The config with its feature layers resolved for a target of ``target_layers`` layers."""
        layers = self.feature_layers or default_feature_layers(target_layers)
        if len(layers) != 3 or not all(0 <= i < target_layers for i in layers):
            raise EagleConfigError(f"feature layers {list(layers)} must be three decoder-layer indices in "
                                   f"0…{target_layers - 1}")
        return replace(self, feature_layers=tuple(layers))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every drafter tensor (checkpoint key → shape), the optional embedding excluded."""
        c = self.layer
        h, i, q, kv = c.hidden_size, c.intermediate_size, c.q_size, c.kv_size
        pre = "midlayer."
        shapes: dict[str, tuple[int, ...]] = {
            "fc.weight": (h, 3 * self.target_hidden_size),
            pre + "hidden_norm.weight": (h,),
            pre + "input_layernorm.weight": (h,),
            pre + "post_attention_layernorm.weight": (h,),
            pre + "self_attn.q_proj.weight": (q, 2 * h),
            pre + "self_attn.k_proj.weight": (kv, 2 * h),
            pre + "self_attn.v_proj.weight": (kv, 2 * h),
            pre + "self_attn.o_proj.weight": (h, q),
        }
        if c.qkv_bias:
            shapes.update({pre + "self_attn.q_proj.bias": (q,), pre + "self_attn.k_proj.bias": (kv,),
                           pre + "self_attn.v_proj.bias": (kv,)})
        shapes.update({
            pre + "mlp.gate_proj.weight": (i, h),
            pre + "mlp.up_proj.weight": (i, h),
            pre + "mlp.down_proj.weight": (h, i),
            "norm.weight": (h,),
            "lm_head.weight": (self.draft_vocab_size, h),
            "d2t": (self.draft_vocab_size,),
            "t2d": (c.vocab_size,),
        })
        return shapes

    def describe(self) -> dict[str, Any]:
        return {"draft_vocab_size": self.draft_vocab_size, "target_hidden_size": self.target_hidden_size,
                "feature_layers": list(self.feature_layers) if self.feature_layers else None,
                "norm_before_residual": self.norm_before_residual}


class Eagle3Layer(nn.Module):
    """EAGLE-3's midlayer: attention over [input_layernorm(embedding), hidden_norm(feature)]."""

    def __init__(self, config: Eagle3Config):
        super().__init__()
        c = config.layer
        self.norm_before_residual = config.norm_before_residual
        self.self_attn = EagleAttention(c)
        h = c.hidden_size  # q/k/v read the concatenation of embedding and feature
        self.self_attn.q_proj = nn.Linear(2 * h, c.q_size, bias=c.qkv_bias)
        self.self_attn.k_proj = nn.Linear(2 * h, c.kv_size, bias=c.qkv_bias)
        self.self_attn.v_proj = nn.Linear(2 * h, c.kv_size, bias=c.qkv_bias)
        self.mlp = EagleMLP(c)
        self.hidden_norm = RMSNorm(h, c.rms_norm_eps)
        self.input_layernorm = RMSNorm(h, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, c.rms_norm_eps)

    def forward(self, emb, feat, cos, sin, past, attn_mask, cache, last_only=False):
        normed = self.hidden_norm(feat)
        residual = normed if self.norm_before_residual else feat
        x = torch.cat((self.input_layernorm(emb), normed), dim=-1)
        attn, kv = self.self_attn(x, cos, sin, past, attn_mask, cache, last_only)
        x = (residual[:, -1:] if last_only else residual) + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class Eagle3Model(nn.Module):
    """fc(f_low, f_mid, f_high) or the drafter's own last output → midlayer → pre-norm output.

    Same call as :class:`~coral_bench.drafters.eagle_model.EagleModel` (``EagleOutput.hidden`` is the
    pre-norm output the next step reads), so the EAGLE-2 tree builder drives either; ``norm`` and
    ``lm_head`` belong to the head (:class:`Eagle3Head`), which reads them from here.
    """

    def __init__(self, config: Eagle3Config):
        super().__init__()
        self.config = config
        c = config.layer
        self.fc = nn.Linear(3 * config.target_hidden_size, c.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(c.vocab_size, dtype=torch.bool))
        self.register_buffer("inv_freq", rope_inv_freq(c), persistent=False)

    rope = EagleModel.rope  # the same RoPE from the same inv_freq buffer

    def forward(self, emb, feat, positions, past=None, attn_mask=None, cache=None, last_only=False) -> EagleOutput:
        """``feat`` [B, S, 3·H_t] (target features: through fc) or [B, S, H] (the drafter's own output)."""
        if cache is not None and past is not None:
            raise ValueError("give either past or cache, not both")
        if feat.shape[-1] == 3 * self.config.target_hidden_size:
            feat = self.fc(feat)
        cos, sin = self.rope(positions, emb.dtype)
        x, kv = self.midlayer(emb, feat, cos, sin, past, attn_mask, cache, last_only)
        return EagleOutput(hidden=x, kv=kv)

    @torch.no_grad()
    def init_random(self, generator: torch.Generator, target_vocab: int) -> None:
        """Fan-in scaled normal weights, unit norms; the draft vocabulary = the first draft_vocab_size
        target ids (d2t zero). Drawn on the CPU in float32: a seed gives the same weights in any dtype."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.ones(p.shape))
            elif name.endswith(".bias"):
                p.copy_(torch.zeros(p.shape))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)
        self.d2t.zero_()
        self.t2d.zero_()
        self.t2d[: min(self.config.draft_vocab_size, target_vocab)] = True

    def parameter_count(self) -> int:
        """fc, midlayer, norm and the draft-vocabulary LM head (all the drafter's own)."""
        return sum(p.numel() for p in self.parameters())


class Eagle3Head:
    """The draft head of an EAGLE-3 drafter: its own norm and LM head over the draft vocabulary, top-k
    mapped to target ids through ``d2t`` (a :class:`~coral_bench.drafters.draft_heads.DraftHead`)."""

    def __init__(self, model: Eagle3Model):
        self.model = model
        self.targets = torch.arange(model.config.draft_vocab_size, device=model.d2t.device) + model.d2t

    def top(self, features: torch.Tensor, k: int) -> HeadTop:
        m = self.model
        logits = F.linear(m.norm(features.to(m.lm_head.weight.dtype)), m.lm_head.weight)  # [R, V_draft]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        vals, cols = logits.topk(k, dim=-1)
        return HeadTop(vals - logits.logsumexp(-1, keepdim=True), self.targets[cols])

    def min_choices(self) -> int:
        return self.model.config.draft_vocab_size

    def parameter_count(self) -> int:
        return 0  # norm and lm_head are counted with the model

    def describe(self) -> dict[str, Any]:
        return {"kind": "eagle3", **self.model.config.describe()}
