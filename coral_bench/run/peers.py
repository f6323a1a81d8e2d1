"""Peers: other implementations timed beside coral-bench's methods on the same target object.

Each peer is transformers' own ``generate`` on the target's model, with the same prompts, EOS set,
``max_new_tokens``, sampling settings and clock (threads and dtype are the model's):

- ``hf-vanilla``: plain ``generate``. If coral-bench's vanilla were slower than it, every speedup
  would be inflated.
- ``hf-prompt-lookup[:N]``: ``generate(prompt_lookup_num_tokens=N, max_matching_ngram_size=3)``,
  N defaulting to coral-bench ``prompt-lookup``'s chain length (4) and the n-gram size set to its
  largest n (3; transformers' default is 2). No tokenizer is needed. Differences that remain:
  transformers takes the *first* earlier occurrence of the n-gram, coral-bench the most recent;
  transformers stops a draft before an EOS token.
- ``hf-early-exit[:LAYERS]``: ``generate(assistant_early_exit=LAYERS)``: the model's first LAYERS
  layers + norm + LM head draft (default LAYERS: coral-bench ``early-exit``'s, a quarter of the
  layers). Works for model families whose decoder loops over ``layers[: config.num_hidden_layers]``
  (Llama, Qwen2, Mistral…). The draft length and stopping come from the **model's** generation
  config, not from ``generate``'s arguments (transformers 5.24 reads the assistant's own config,
  here the target's): by default up to 20 tokens, cut when the drafter's top probability falls
  below 0.4. The effective values are recorded as the peer's ``generate_options``. Its assistant
  keeps a separate cache and re-encodes the prompt with the first LAYERS layers (coral-bench's
  ``early-exit`` reuses the target's KV).

``generate`` exposes neither cycles nor accepted counts, so peers record none: the results report
them as not available (None), never guessed. ``prefill_s`` is not measurable either.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from coral_bench.core.clock import Clock
from coral_bench.core.decode import Generation
from coral_bench.drafters.early_exit import default_layers
from coral_bench.drafters.prompt_lookup import MAX_NGRAM
from coral_bench.run.specs import PeerSpec
from coral_bench.core.records import STOP_EOS, STOP_LENGTH
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target

HF_VANILLA = "hf-vanilla"
HF_PROMPT_LOOKUP = "hf-prompt-lookup"
HF_EARLY_EXIT = "hf-early-exit"
PROMPT_LOOKUP_TOKENS = 4  # coral-bench prompt-lookup's default chain:4 (drafters/registry.py)

PEERS = {
    HF_VANILLA: "transformers' generate() on the same model object (always run)",
    HF_PROMPT_LOOKUP: f"generate(prompt_lookup_num_tokens=N) (hf-prompt-lookup[:N], default N = "
                      f"{PROMPT_LOOKUP_TOKENS}, n-grams up to {MAX_NGRAM} as prompt-lookup)",
    HF_EARLY_EXIT: "generate(assistant_early_exit=LAYERS) (hf-early-exit[:LAYERS], default a quarter of the "
                   "layers; draft length from the model's generation config)",
}
# What transformers' assisted generation reads from the assistant's (here: the target's) own config.
ASSISTANT_OPTIONS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


class PeerError(ValueError):
    """An unknown or failing peer."""


@dataclass(frozen=True)
class HfPeer:
    """One way of calling transformers' ``generate``: extra keyword arguments on top of the shared ones."""

    name: str
    options: tuple[tuple[str, int | float | str | None], ...] = ()  # generate() keyword arguments
    recorded: tuple[tuple[str, int | float | str | None], ...] = ()  # effective settings read elsewhere

    def options_json(self) -> dict:
        return dict(self.options) | dict(self.recorded)

    def run(self, target: Target, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
            seed: int, clock: Clock) -> Generation:
        return hf_generate(target, prompt_ids, max_new_tokens, sampling, seed, clock, dict(self.options))


def build_peer(spec: PeerSpec, target: Target) -> HfPeer:
    """Resolve ``--peer NAME[:ARG]`` against the target; bad input raises :class:`PeerError`."""
    if spec.name not in PEERS:
        raise PeerError(f"unknown peer {spec.name!r}: choose from {', '.join(PEERS)}")
    if spec.name == HF_VANILLA:
        if spec.arg is not None:
            raise PeerError(f"{HF_VANILLA} takes no argument (got {spec.arg!r})")
        return HfPeer(HF_VANILLA)
    if spec.name == HF_PROMPT_LOOKUP:
        tokens = _count(spec, PROMPT_LOOKUP_TOKENS, "N", None)
        return HfPeer(HF_PROMPT_LOOKUP, (("prompt_lookup_num_tokens", tokens), ("max_matching_ngram_size", MAX_NGRAM)))
    layers = _count(spec, default_layers(target.num_layers), "LAYERS", target.num_layers)
    return HfPeer(HF_EARLY_EXIT, (("assistant_early_exit", layers),), _assistant_options(target))


def _count(spec: PeerSpec, default: int, what: str, most: int | None) -> int:
    if spec.arg is None:
        return default
    try:
        value = int(spec.arg)
    except ValueError:
        value = 0
    if value < 1 or (most is not None and value > most):
        bound = f"between 1 and the target's {most} layers" if most is not None else ">= 1"
        raise PeerError(f"{spec.name}:{spec.arg}: {what} must be an integer {bound}")
    return value


def _assistant_options(target: Target) -> tuple[tuple[str, int | float | str | None], ...]:
    """The assistant settings transformers will use: the model's generation config over its defaults."""
    config = copy.deepcopy(target.model.generation_config)
    defaults = getattr(config, "_get_default_generation_params", None)  # private in 5.24: recorded only
    if defaults is not None:
        config.update(**defaults(), defaults_only=True)
    return tuple((name, getattr(config, name, None)) for name in ASSISTANT_OPTIONS)


def hf_generate(target: Target, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
                seed: int, clock: Clock, extra: dict | None = None) -> Generation:
    """transformers' ``generate`` on the target's model; acceptance counts are not available.

    ``extra``: further ``generate`` arguments (prompt lookup, early exit). The state transformers
    changes on the shared model object during assisted generation is put back whatever happens:
    ``config.num_hidden_layers`` (early exit lowers it while drafting and does not restore it when
    drafting raises) and the generation config's ``num_assistant_tokens`` (the ``heuristic``
    schedule stores its last value there, which would leak into the next sample).
    """
    model = target.model
    ids = torch.tensor([prompt_ids], device=target.device)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=list(target.eos_token_ids),
                  pad_token_id=target.eos_token_ids[0], attention_mask=torch.ones_like(ids), **(extra or {}))
    if sampling.is_greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(seed)  # generate samples from the global generator
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k or None)
    configs = {id(c): c for c in (model.config, model.base_model.config)}.values()
    layers = [(c, c.num_hidden_layers) for c in configs]
    assistant_tokens = model.generation_config.num_assistant_tokens
    try:
        start = clock.now()
        with torch.inference_mode():
            out = model.generate(ids, **kwargs)
        wall = clock.now() - start
    finally:
        for config, count in layers:
            config.num_hidden_layers = count
        model.generation_config.num_assistant_tokens = assistant_tokens
    new = out[0, len(prompt_ids):].tolist()[:max_new_tokens]
    eos = set(target.eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    new = new[:cut]
    stop = STOP_EOS if new and new[-1] in eos else STOP_LENGTH
    return Generation(tuple(new), stop, wall, None, ())


@dataclass(frozen=True)
class PeerFailure:
    """A peer that raised: the run goes on without it; results.json records this under ``peers.<name>``."""

    error: str  # "ExceptionType: first line of the message"
    question_id: str | None  # None: during the untimed warm-up
    turn: int | None

    @classmethod
    def from_exception(cls, exc: BaseException, question_id: str | None = None, turn: int | None = None):
        lines = str(exc).strip().splitlines()
        return cls(f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__, question_id, turn)

    def to_json(self) -> dict:
        return {"error": self.error, "failed_at": "warm-up" if self.question_id is None
                else {"question_id": self.question_id, "turn": self.turn}}
