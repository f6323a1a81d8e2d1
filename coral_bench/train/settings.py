"""Training settings: what determines a drafter training run, and each method's defaults.

``TrainSettings`` is recorded in the checkpoint (``training-state/state.pt``) and in the drafter's
config.json, and a resumed run must match it (but for ``RESUMABLE_CHANGES``), so the settings and
their validation live apart from the loop that runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .losses import LossSettings
from .multistep import HISTORY

DTYPES = ("fp32", "bf16", "fp64")  # bf16 = fp32 master weights + bf16 autocast
SCHEDULES = ("cosine", "linear", "constant")
INITS = ("identity", "random")
FEATURE_SOURCES = ("stored", "online")  # online: the target computes each batch's features
# Settings a resumed run may change without changing the result.
RESUMABLE_CHANGES = ("checkpoint_every",)


class TrainError(ValueError):
    """Training that cannot start or continue (bad settings, mismatched resume, unusable data)."""


@dataclass(frozen=True)
class MethodDefaults:
    steps: int  # unroll steps n
    distill_weight: float  # HASS top-K distillation
    csra_weight: float  # CORAL λ
    description: str


METHODS: dict[str, MethodDefaults] = {
    "eagle2": MethodDefaults(1, 0.0, 0.0, "EAGLE: one step, SmoothL1 + 0.1·soft CE"),
    "hass": MethodDefaults(3, 1.0, 0.0, "HASS: 3-step harmonized context alignment + top-K distillation"),
    "coral": MethodDefaults(3, 1.0, 0.1, "CORAL: HASS + λ·CSRA (cross-step InfoNCE), one backward"),
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run (recorded in the checkpoint)."""

    method: str
    steps: int  # unroll steps n (1 for eagle2, 3 for hass/coral by default)
    loss: LossSettings
    epochs: int = 1
    lr: float = 3e-4  # EAGLE/HASS use 3e-5 for 7B drafters; small drafters and short runs want more (untuned)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # None: 5 % of all optimizer steps (at least 1)
    schedule: str = "cosine"  # decay to 0 after the warmup
    grad_clip_value: float = 0.5
    feature_noise: float = 0.05  # U(−a, a)·RMS(f_t) on step-1 input features
    batch_tokens: int = 2048  # global batch: rows × longest slot count ≤ this
    seed: int = 0
    dtype: str = "fp32"
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    eval_fraction: float = 0.02
    history: str = "keep-real"  # slots t < j − 1 at step j: keep the real feature (HASS) or exclude
    detach_step_inputs: bool = True  # HASS: step j > 1 inputs are detached
    init: str = "identity"
    loss_vocab: int = 0  # > 0: soft CE / top-K over the most frequent training tokens only (a CPU lever)
    loss_chunk_rows: int = 0  # > 0: soft CE / top-K a block of this many slots at a time (memory, not values)
    max_sequences: int | None = None  # train on the first N training sequences (sweeps on a shorter budget)
    split_seed: int | None = None  # the held-out split's seed (None: seed): seeds compared on one held-out set
    features: str = "stored"  # "online": a teacher-forced target forward per batch instead of the store's features

    @property
    def held_out_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {tuple(METHODS)}, not {self.method!r}"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES}"),
            (self.history in HISTORY, f"history must be one of {HISTORY}"),
            (self.init in INITS, f"init must be one of {INITS}"),
            (self.batch_tokens >= 1, "batch_tokens must be >= 1"),
            (self.grad_clip_value > 0, "grad_clip_value must be > 0"),
            (self.feature_noise >= 0, "feature_noise must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.loss_vocab >= 0, "loss_vocab must be >= 0 (0: the full vocabulary)"),
            (self.loss_chunk_rows >= 0, "loss_chunk_rows must be >= 0 (0: not chunked)"),
            (self.max_sequences is None or self.max_sequences >= 1, "max_sequences must be >= 1"),
            (self.features in FEATURE_SOURCES, f"features must be one of {FEATURE_SOURCES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)
        if self.loss.csra_weight and self.steps < 2:
            raise TrainError("CSRA aligns steps: it needs steps >= 2")

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["betas"] = list(self.betas)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "TrainSettings":
        body = dict(body)
        body["loss"] = LossSettings(**body["loss"])
        body["betas"] = tuple(body["betas"])
        return cls(**body)


def settings_for(method: str, steps: int | None = None, **overrides: Any) -> TrainSettings:
    """The method's defaults (steps, distillation, CSRA) with ``overrides``; loss fields
    (``csra_weight``, ``distill_k``…) may be given directly."""
    if method not in METHODS:
        raise TrainError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    d = METHODS[method]
    loss_names = {f.name for f in fields(LossSettings)}
    loss_kw = {k: overrides.pop(k) for k in list(overrides) if k in loss_names}
    loss = LossSettings(**{"distill_weight": d.distill_weight, "csra_weight": d.csra_weight, **loss_kw})
    return TrainSettings(method=method, steps=d.steps if steps is None else steps, loss=loss, **overrides)
