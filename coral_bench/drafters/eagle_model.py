"""The EAGLE-style drafter network: fc over (embedding, feature), one decoder layer, no final norm.

coral-bench's own small module rather than an HF decoder layer (docs/methods.md §2): attention takes
explicit RoPE positions, an explicit set of earlier keys/values and an explicit mask, which is what
multi-step training (docs/methods.md §5, HASS) needs, and it keeps the drafter away from transformers
API changes. The module owns neither the token embedding nor the LM head: the drafter uses the
target's frozen ones.

State-dict keys equal the EAGLE/HASS checkpoint keys (``fc.weight``, ``layers.0.self_attn.q_proj.weight``,
…), so checkpoints load with ``load_state_dict`` after validation (see ``checkpoint.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


class EagleConfigError(ValueError):
    """A drafter configuration coral-bench cannot build (unsupported activation, RoPE type...)."""


@dataclass(frozen=True)
class EagleConfig:
    """Shape of an EAGLE-style drafter; read from a Llama/Qwen2-style config dict.

    ``rope_scaling`` is None for plain RoPE, else a dict with ``rope_type`` ("linear" or "llama3")
    and its parameters. ``fc_bias`` follows docs/methods.md §2: fc has a bias unless the config says
    ``"bias": false``. ``qkv_bias`` gives q/k/v (never o) projections biases.
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    fc_bias: bool
    qkv_bias: bool
    max_position_embeddings: int
    vocab_size: int

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise EagleConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise EagleConfigError(f"head_dim {self.head_dim} must be even for RoPE")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], **overrides: Any) -> "EagleConfig":
        """Read a Llama/Qwen2-style config dict (a drafter's config.json or a target's ``to_dict()``).

        Understands both the transformers 5 ``rope_parameters`` form and the older ``rope_theta`` +
        ``rope_scaling`` form. ``overrides`` replace fields after reading (e.g. max_position_embeddings).
        """
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            fields = dict(
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                vocab_size=int(cfg["vocab_size"]),
            )
        except KeyError as err:
            raise EagleConfigError(f"drafter config lacks {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise EagleConfigError(f"drafter config has a bad value: {err}") from None
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise EagleConfigError(f"hidden_act {act!r} is not supported (EAGLE drafters use silu)")
        if cfg.get("mlp_bias"):
            raise EagleConfigError("mlp_bias is not supported (EAGLE drafters have no MLP biases)")
        fields["rope_theta"], fields["rope_scaling"] = _read_rope(cfg)
        # docs/methods.md §2: fc has a bias unless the config says "bias": false.
        fields["fc_bias"] = bool(cfg.get("bias", True))
        # Declared flags win; Qwen2 declares neither and always has q/k/v biases.
        if "qkv_bias" in cfg:
            fields["qkv_bias"] = bool(cfg["qkv_bias"])
        elif "attention_bias" in cfg:
            fields["qkv_bias"] = bool(cfg["attention_bias"])
        else:
            fields["qkv_bias"] = cfg.get("model_type") == "qwen2"
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """A Llama-style config.json body in the EAGLE/HASS layout (one layer, ``bias``, ``qkv_bias``)."""
        body = asdict(self)
        fc_bias = body.pop("fc_bias")
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "num_hidden_layers": 1,
            "hidden_act": "silu",
            **body,
            "bias": fc_bias,
            "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
        }

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every drafter weight (checkpoint key → shape), embedding excluded."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.q_size, self.kv_size
        shapes: dict[str, tuple[int, ...]] = {"fc.weight": (h, 2 * h)}
        if self.fc_bias:
            shapes["fc.bias"] = (h,)
        pre = "layers.0."
        shapes.update({
            pre + "self_attn.q_proj.weight": (q, h),
            pre + "self_attn.k_proj.weight": (kv, h),
            pre + "self_attn.v_proj.weight": (kv, h),
            pre + "self_attn.o_proj.weight": (h, q),
        })
        if self.qkv_bias:
            shapes.update({
                pre + "self_attn.q_proj.bias": (q,),
                pre + "self_attn.k_proj.bias": (kv,),
                pre + "self_attn.v_proj.bias": (kv,),
            })
        shapes.update({
            pre + "mlp.gate_proj.weight": (i, h),
            pre + "mlp.up_proj.weight": (i, h),
            pre + "mlp.down_proj.weight": (h, i),
            pre + "post_attention_layernorm.weight": (h,),
        })
        return shapes


def _read_rope(cfg: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping):  # transformers 5: one dict with the theta inside
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling: Mapping[str, Any] | None = params
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling")
    if not scaling:
        return float(theta), None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise EagleConfigError(f"RoPE type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if float(scaling.get("partial_rotary_factor", 1.0)) != 1.0:
        raise EagleConfigError("partial_rotary_factor != 1 is not supported")
    if rope_type == "default":
        return float(theta), None
    keys = ("factor",) if rope_type == "linear" else _LLAMA3_KEYS
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise EagleConfigError(f"{rope_type} RoPE scaling lacks {missing}")
    return float(theta), {"rope_type": rope_type, **{k: scaling[k] for k in keys}}


def rope_inv_freq(config: EagleConfig) -> torch.Tensor:  # [head_dim / 2] float32
    """Inverse RoPE frequencies, computed as transformers does (float32), with linear / llama3 scaling."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # llama3 (Llama 3.1): long wavelengths divided by factor, short ones kept, a smooth blend between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass(frozen=True)
class KVBlock:
    """Keys (after RoPE, at their own positions) and values of some drafter slots."""

    keys: torch.Tensor  # [B, kv_heads, K, head_dim]
    values: torch.Tensor  # [B, kv_heads, K, head_dim]

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    def cat(self, other: "KVBlock") -> "KVBlock":
        """Columns of ``self`` then of ``other`` (masks index key columns in this order)."""
        return KVBlock(torch.cat((self.keys, other.keys), 2), torch.cat((self.values, other.values), 2))


class DraftKVCache:
    """The inference drafter's own KV cache (batch 1): a growing buffer with append and truncate.

    Appending writes into preallocated storage (doubling when full), so a forward never copies the
    whole cache; ``truncate`` only moves the length back (tree entries are dropped after proposing,
    docs/methods.md §2).
    """

    def __init__(self) -> None:
        self._keys: torch.Tensor | None = None  # [1, kv_heads, capacity, head_dim]
        self._values: torch.Tensor | None = None
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0

    def append(self, block: KVBlock) -> None:
        n = block.length
        need = self.length + n
        if self._keys is None or need > self._keys.shape[2] or self._keys.dtype != block.keys.dtype:
            capacity = max(64, 2 * need)
            shape = (*block.keys.shape[:2], capacity, block.keys.shape[3])
            keys = block.keys.new_empty(shape)
            values = block.values.new_empty(shape)
            if self._keys is not None and self.length:
                keys[:, :, : self.length] = self._keys[:, :, : self.length]
                values[:, :, : self.length] = self._values[:, :, : self.length]
            self._keys, self._values = keys, values
        self._keys[:, :, self.length : need] = block.keys
        self._values[:, :, self.length : need] = block.values
        self.length = need

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a drafter cache of {self.length} entries to {length}")
        self.length = length

    def view(self) -> KVBlock:
        """The cached entries (a view into the buffer, valid until the next append)."""
        if self._keys is None:
            raise ValueError("empty drafter cache")
        return KVBlock(self._keys[:, :, : self.length], self._values[:, :, : self.length])


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As Llama: normalise in float32, scale in the input dtype.
        dtype = x.dtype
        xf = x.to(torch.promote_types(dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class EagleAttention(nn.Module):
    """Grouped-query attention with explicit RoPE positions, explicit earlier keys and mask."""

    def __init__(self, config: EagleConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.q_proj = nn.Linear(h, config.q_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, config.kv_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, config.kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.q_size, h, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # [B, S, H]
        cos: torch.Tensor,  # [B, 1, S, head_dim]
        sin: torch.Tensor,  # [B, 1, S, head_dim]
        past: KVBlock | None,
        attn_mask: torch.Tensor | None,  # [B|1, 1, S, K + S] bool or additive
        cache: DraftKVCache | None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, KVBlock]:
        b, s, _ = x.shape
        c = self.config
        k = self.k_proj(x).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        k = k * cos + _rotate_half(k) * sin
        if last_only:  # keys/values for every row, the query (and all that follows) for the last only
            x, cos, sin = x[:, -1:], cos[:, :, -1:], sin[:, :, -1:]
            attn_mask = None if attn_mask is None else attn_mask[..., -1:, :]
        sq = x.shape[1]
        q = self.q_proj(x).view(b, sq, c.num_attention_heads, c.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        new = KVBlock(k, v)
        if cache is not None:  # append first, then attend over the buffer view: no copy of the cache
            cache.append(new)
            kv = cache.view()
        else:
            kv = new if past is None else past.cat(new)
        k_len = kv.length
        is_causal = False
        if attn_mask is None and sq > 1:
            if k_len == sq:
                is_causal = True
            else:  # causal among the new rows, every earlier key visible
                attn_mask = torch.ones(sq, k_len, dtype=torch.bool, device=x.device).tril(k_len - sq)
        out = F.scaled_dot_product_attention(
            q, kv.keys, kv.values, attn_mask=attn_mask, is_causal=is_causal,
            enable_gqa=c.num_key_value_heads != c.num_attention_heads,
        )  # [B, heads, S, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(b, sq, c.q_size)), new


class EagleMLP(nn.Module):
    def __init__(self, config: EagleConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EagleDecoderLayer(nn.Module):
    """A Llama decoder layer without ``input_layernorm`` (docs/methods.md §2); keeps the post-attention norm."""

    def __init__(self, config: EagleConfig):
        super().__init__()
        self.self_attn = EagleAttention(config)
        self.mlp = EagleMLP(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, past, attn_mask, cache, last_only=False) -> tuple[torch.Tensor, KVBlock]:
        attn, kv = self.self_attn(x, cos, sin, past, attn_mask, cache, last_only)
        x = (x[:, -1:] if last_only else x) + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


@dataclass(frozen=True)
class EagleOutput:
    """One drafter forward."""

    hidden: torch.Tensor  # [B, S, H] (S = 1 with last_only) predicted features f̂_{s+1} (no final norm; feed the target's LM head)
    kv: KVBlock  # keys/values of the S new slots, [B, kv_heads, S, head_dim]


class EagleModel(nn.Module):
    """fc(concat(embed(x_{s+1}), f_s)) → one decoder layer → f̂_{s+1} (docs/methods.md §2)."""

    def __init__(self, config: EagleConfig):
        super().__init__()
        self.config = config
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=config.fc_bias)
        self.layers = nn.ModuleList([EagleDecoderLayer(config)])
        # Derived from the config, never stored in checkpoints.
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, S, head_dim] for positions [B, S]; angles in float32 as transformers computes them."""
        freqs = positions.float()[..., None] * self.inv_freq.float()  # [B, S, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        emb: torch.Tensor,  # [B, S, H] embeddings of the next tokens x_{s+1}
        feat: torch.Tensor,  # [B, S, H] features f_s (real or self-predicted)
        positions: torch.Tensor,  # [B, S] int64, the RoPE position of each new slot
        past: KVBlock | None = None,  # earlier keys/values (already rotated at their own positions)
        attn_mask: torch.Tensor | None = None,  # [B|1, 1, S, K + S]
        cache: DraftKVCache | None = None,
        last_only: bool = False,
    ) -> EagleOutput:
        """Run S new slots.

        Keys are ``past`` (or the ``cache``) followed by the S new slots, in that column order.
        ``attn_mask`` is boolean (True = may attend) or additive float (0 / large negative; never
        1/0); None means every earlier key is visible and the new slots are causal among themselves.
        With ``cache`` the new keys/values are appended to it (``past`` must then be None).
        ``last_only`` computes the output of the last slot only ([B, 1, H]; keys/values still for all
        S): a slot's output depends on its own query alone, so inference, which needs only the last
        output, skips attention and MLP for the other rows (drafter prefill, first forward of a cycle).
        """
        if cache is not None and past is not None:
            raise ValueError("give either past or cache, not both")
        cos, sin = self.rope(positions, emb.dtype)
        x = self.fc(torch.cat((emb, feat), dim=-1))  # embedding first, feature second (docs/methods.md §2)
        x, kv = self.layers[0](x, cos, sin, past, attn_mask, cache, last_only)
        return EagleOutput(hidden=x, kv=kv)

    @torch.no_grad()
    def init_random(self, generator: torch.Generator) -> None:
        """Fan-in scaled normal weights (variance preserving), zero biases, unit norm.

        With unit-variance-preserving layers the output has the magnitude of the inputs, so the
        target's LM head gives logits with a realistic spread rather than a uniform or one-hot
        distribution. Draws on the CPU in float32 so a seed gives the same weights in every dtype.
        """
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight"):
                value = torch.ones(p.shape)
            elif name.endswith(".bias"):
                value = torch.zeros(p.shape)
            else:
                value = torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[1])
            p.copy_(value)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
