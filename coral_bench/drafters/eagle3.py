"""The EAGLE-3 drafter: an EAGLE-2 tree drafted from three target layers' features (docs/methods.md §2).

Bookkeeping is the EAGLE-style drafter's (``eagle.py``), slot for slot; what changes is what a slot
reads. Real slots read the inputs of three target decoder layers (``LayerTaps``, captured during the
target's own prefill and scoring forwards, so no extra forward) instead of the last layer's features,
and every node's draft distribution comes from the drafter's own head over its draft vocabulary
(``Eagle3Head``: ``d2t`` maps its ids to the target's). The target verifies every token, so the
output is the target's whatever the drafter proposes.

``eagle3:CKPT`` loads a public EAGLE-3 checkpoint (``eagle3_checkpoint.py``); ``eagle3`` or
``eagle3:random`` builds random weights shaped from the target (``@vocab=V``, default
min(32000, V): EAGLE-3's usual draft vocabulary) for tests and latency profiles.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings, generator_for
from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import Verdict
from .eagle import RANDOM_CHECKPOINT, EagleDrafter, EagleInfo
from .eagle3_checkpoint import load_eagle3_checkpoint
from .eagle3_model import Eagle3Config, Eagle3Head, Eagle3Model
from .eagle_model import EagleConfigError
from .layer_taps import LayerTaps
from .options import MethodError, split_argument

DEFAULT_DRAFT_VOCAB = 32000  # EAGLE-3's published drafters draft from the 32k most frequent tokens


class Eagle3Drafter(EagleDrafter):
    """An :class:`EagleDrafter` whose real slots read tapped target layers and whose head is its own."""

    def __init__(self, target: Target, model: Eagle3Model, settings: DrafterSettings, info: EagleInfo,
                 embed_weight: torch.Tensor | None = None):
        super().__init__(target, model, settings, info, embed_weight=embed_weight, head=Eagle3Head(model))
        self.taps = LayerTaps(target.model, model.config.feature_layers)

    def begin(self, context: DraftContext) -> None:
        features = self.taps.features(len(context.prompt_ids))  # [P, 3·H] of the prefill just run
        super().begin(replace(context, prefill=replace(context.prefill, features=features)))

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        features = self.taps.features(scored.features.shape[0])  # [N, 3·H] of the tree just scored
        super().commit(verdict, replace(scored, features=features))


def build_eagle3(target: Target, settings: DrafterSettings) -> Eagle3Drafter:
    """Drafter factory: a checkpoint (validated against the target) or seeded random weights."""
    try:
        path, options = split_argument(settings.checkpoint)
    except MethodError as err:
        raise DrafterError(str(err)) from None
    unknown = sorted(set(options) - {"vocab"})
    if unknown:
        raise DrafterError(f"eagle3 takes @vocab=V (random weights only), not @{', @'.join(unknown)}")
    if path in (None, RANDOM_CHECKPOINT):
        model, config = _random_model(target, settings, options)
        info = EagleInfo(checkpoint=None, embedding="target", config=config.layer, seed=settings.seed,
                         head={"kind": "eagle3", **config.describe()})
        return Eagle3Drafter(target, model.to(device=target.device, dtype=target.dtype), settings, info)
    if "vocab" in options:
        raise DrafterError("@vocab shapes random weights; a checkpoint brings its own draft vocabulary")
    ckpt = load_eagle3_checkpoint(path, target.embedding_weight(), target.num_layers, target.model.config.to_dict())
    model = ckpt.build_model(dtype=target.dtype, device=target.device)
    embed = ckpt.embed_tokens.to(device=target.device, dtype=target.dtype) if ckpt.uses_own_embedding else None
    info = EagleInfo(checkpoint=ckpt.path, embedding="checkpoint" if embed is not None else "target",
                     config=ckpt.config.layer, head={"kind": "eagle3", **ckpt.config.describe()},
                     weights_sha256=ckpt.weights_sha256)
    return Eagle3Drafter(target, model, settings, info, embed_weight=embed)


def _random_model(target: Target, settings: DrafterSettings, options: dict[str, str]):
    vocab = target.vocab_size
    try:
        draft_vocab = int(options.get("vocab", min(DEFAULT_DRAFT_VOCAB, vocab)))
    except ValueError:
        raise DrafterError(f"@vocab must be an integer, not {options['vocab']!r}") from None
    if not 1 <= draft_vocab <= vocab:
        raise DrafterError(f"@vocab must be in 1…{vocab} (the target's vocabulary), not {draft_vocab}")
    body = target.model.config.to_dict() | {"draft_vocab_size": draft_vocab, "num_hidden_layers": 1}
    try:
        config = Eagle3Config.from_dict(body, vocab_size=vocab, max_position_embeddings=target.max_context)
        config = config.with_target(target.num_layers)
    except EagleConfigError as err:
        raise DrafterError(f"cannot shape an EAGLE-3 drafter for {target.name}: {err}") from None
    model = Eagle3Model(config)
    model.init_random(generator_for(settings.seed), vocab)
    return model, config
