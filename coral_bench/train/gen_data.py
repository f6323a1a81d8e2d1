"""Training data from the target: prompts → responses → (ids, features, loss mask) in a feature store.

Self-distillation (docs/methods.md §5): the target answers each training prompt itself, rendered with its
chat template exactly as in evaluation (``chat.render``, template's default system prompt unless the
record has its own), greedy by default. Prompts are batched with LEFT padding and an explicit
attention mask, and transformers' ``generate`` returns the post-norm last-layer features of every
position it ran (prompt and generated tokens) at no extra cost; the one position it never runs (the
final token of the rows still going at the last step) gets one extra cached step. ``tests/test_data.py``
checks that the stored features equal a teacher-forced forward of each finished sequence.
``capture="forward"`` does that teacher-forced forward instead (less memory for large targets).

Fixed responses (``responses="dataset"``: GSM8K answers, ShareGPT's own answers) are tokenised after
the rendered prompt and featurised by a teacher-forced forward.

Multi-turn: by default only the first user turn of each conversation is used. With ``turns=K`` the
target also answers turns 2…K, each time after its own previous answers (re-rendered, as MT-bench is
evaluated); the stored sequence is the last round's prompt + response, and every answer in it is in
the loss. A conversation stops early at an answer that hits ``max_new_tokens`` or at a turn that
would not fit ``max_prompt_tokens``.

Masks come from lengths, never from pad ids (EOS = pad = ``<|im_end|>`` in SmolLM2): a response
ends at its first EOS, which stays in the loss; a response that hits ``max_new_tokens`` keeps all its
tokens.

Resumable: the prompt order is a pure function of the sources, seed and settings; shards are cut
only at batch boundaries, so a restarted job redoes exactly the batches after the last complete
shard and writes the same store as an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence as Seq
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from coral_bench.run.chat import render, template_hash
from coral_bench.run.devices import DTYPES
from coral_bench.run.targets import LoadedTarget
from coral_bench.core.target import Target
from coral_bench.train.overlap import OverlapIndex
from coral_bench.train.prompts import DEFAULT_SOURCES, Prompt, load_sources, parse_sources, shuffled
from coral_bench.train.store import MANIFEST, FeatureStore, StoreError, StoreWriter, read_manifest
from coral_bench.train.target_passes import AssemblyError, Generation, conversation_mask, generate_batch, teacher_forced

KIND = "coral-bench-training-data"
RESPONSE_MODES = ("generate", "dataset")
CAPTURE_MODES = ("generate", "forward")
STORE_DTYPES = ("bfloat16", "float16", "float32", "float64")
DEFAULT_SHARD_TOKENS = 1 << 18  # ≈ 300 MB of bf16 features at hidden 576; the unit of resumption
SORT_WINDOW = 16  # batches per length-sorted window: padding stays small, sources stay mixed, the ETA honest
_NEVER = 1 << 62  # StoreWriter's own threshold: we cut shards ourselves, at batch boundaries
PROMPT_ORDER = "prompts.txt"  # sidecar: the prompt key ("source:id") of each sequence, in store order


class DataError(ValueError):
    """Bad settings, or a store that does not fit the request; one line for the user."""


@dataclass(frozen=True)
class DataConfig:
    """What to generate. Everything here is recorded in the manifest and checked on resume."""

    sources: str = DEFAULT_SOURCES  # "sharegpt,gsm8k,PATH.jsonl"
    max_prompts: int | None = None  # None: every prompt that passes the filters
    max_new_tokens: int = 256  # per response
    batch_size: int = 64
    max_batch_tokens: int = 1 << 15  # padded prompt tokens per batch: long prompts get smaller batches
    max_prompt_tokens: int = 1024  # rendered prompt; longer prompts are dropped (later turns: cut)
    turns: int = 1  # user turns per conversation (later answers also by the target)
    responses: str = "generate"  # "generate" (self-distillation) or "dataset" (the data's own answers)
    temperature: float = 0.0  # 0: greedy
    seed: int = 0  # prompt shuffle and sampling
    capture: str = "generate"  # features from generate's hidden states, or a teacher-forced "forward"
    ids_only: bool = False  # ids + loss mask only (features [T, 0]); `from_ids` adds features later
    store_dtype: str = "bfloat16"
    shard_tokens: int = DEFAULT_SHARD_TOKENS

    def __post_init__(self) -> None:
        positive = ("max_new_tokens", "batch_size", "max_batch_tokens", "max_prompt_tokens", "turns", "shard_tokens")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise DataError(f"max-prompts must be >= 1, got {self.max_prompts}")
        if self.responses not in RESPONSE_MODES:
            raise DataError(f"unknown response mode {self.responses!r} (valid: {', '.join(RESPONSE_MODES)})")
        if self.capture not in CAPTURE_MODES:
            raise DataError(f"unknown capture mode {self.capture!r} (valid: {', '.join(CAPTURE_MODES)})")
        if self.store_dtype not in STORE_DTYPES:
            raise DataError(f"unknown store dtype {self.store_dtype!r} (valid: {', '.join(STORE_DTYPES)})")
        if not self.temperature >= 0:
            raise DataError(f"temperature must be >= 0, got {self.temperature}")
        if self.responses == "dataset" and self.temperature:
            raise DataError("temperature applies to generated responses, not to --responses dataset")
        parse_sources(self.sources)


@dataclass(frozen=True)
class Built:
    """One finished training sequence."""

    ids: torch.Tensor  # [L] int64: prompt + response(s), chat template applied
    features: torch.Tensor | None  # [L, H] target dtype; None when not computed (ids only)
    loss_mask: torch.Tensor  # [L] bool: response tokens, each final EOS included
    generated: int  # tokens the target generated for this sequence, all rounds (0 for fixed responses)
    hit_max: bool  # the last response stopped at max_new_tokens without EOS


@dataclass(frozen=True)
class DataProgress:
    """Reported after every batch."""

    done: int  # sequences in the store (complete shards and pending)
    total: int
    tokens: int  # response (loss) tokens written this session
    elapsed: float  # seconds this session
    shards: int  # complete shards


@dataclass(frozen=True)
class Selection:
    """The prompts to run, in processing order, and what the filters dropped."""

    prompts: tuple[Prompt, ...]  # [N] processing order (length-sorted within windows)
    first_ids: tuple[tuple[int, ...], ...]  # [N] round-1 prompt ids
    batches: tuple[tuple[int, int], ...]  # [n_batches] (start, end) into prompts
    report: dict = field(repr=False)  # for the manifest


# ---- prompt selection --------------------------------------------------------------------------
def select_prompts(loaded: LoadedTarget, config: DataConfig, index: OverlapIndex) -> Selection:
    """Load, shuffle, decontaminate and length-filter the prompts; order and batch them."""
    loads = load_sources(parse_sources(config.sources))
    pool = shuffled(loads, config.seed, config.turns)
    limit = len(pool) if config.max_prompts is None else config.max_prompts
    chosen: list[Prompt] = []
    ids: list[tuple[int, ...]] = []
    dropped = {"overlap": 0, "too_long": 0, "no_response": 0}
    examined = 0
    for prompt in pool:
        if len(chosen) >= limit:
            break
        examined += 1
        if index.overlaps(prompt):
            dropped["overlap"] += 1
            continue
        if config.responses == "dataset" and not prompt.responses:
            dropped["no_response"] += 1
            continue
        first = tuple(render(loaded.tokenizer, [prompt.turns[0]], [], prompt.system))
        if not _fits(len(first), config, loaded.target):
            dropped["too_long"] += 1
            continue
        chosen.append(prompt)
        ids.append(first)
    if not chosen:
        raise DataError(f"no prompts left from {config.sources!r} after filtering ({examined} examined: {dropped})")
    order = window_sorted([len(x) for x in ids], config.batch_size)
    prompts = tuple(chosen[i] for i in order)
    first_ids = tuple(ids[i] for i in order)
    batches = plan_batches([len(x) for x in first_ids], config.batch_size, config.max_batch_tokens)
    by_source: dict[str, int] = {}
    for p in prompts:
        by_source[p.source] = by_source.get(p.source, 0) + 1
    report = {
        "sources": [load.describe() for load in loads],
        "seed": config.seed,
        "max_prompts": config.max_prompts,
        "turns": config.turns,
        "pool": len(pool),
        "examined": examined,
        "selected": len(prompts),
        "by_source": by_source,
        "dropped_overlap": dropped["overlap"],
        "dropped_too_long": dropped["too_long"],
        "dropped_no_response": dropped["no_response"],
        "overlap_filter": index.describe(),
        "order_sha256": hashlib.sha256("\n".join(p.key for p in prompts).encode()).hexdigest(),
    }
    return Selection(prompts, first_ids, tuple(batches), report)


def _fits(length: int, config: DataConfig, target: Target) -> bool:
    return length <= config.max_prompt_tokens and length + config.max_new_tokens <= target.max_context


def window_sorted(lengths: Seq[int], batch_size: int, window: int = SORT_WINDOW) -> list[int]:
    """Indices sorted by length within consecutive windows of ``window`` batches (stable)."""
    size = batch_size * window
    order: list[int] = []
    for lo in range(0, len(lengths), size):
        order.extend(sorted(range(lo, min(lo + size, len(lengths))), key=lambda i: lengths[i]))
    return order


def plan_batches(lengths: Seq[int], batch_size: int, max_batch_tokens: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) batches of at most ``batch_size`` rows and, beyond one row, at most
    ``max_batch_tokens`` padded tokens (rows × longest). A pure function: resumption recomputes it."""
    batches: list[tuple[int, int]] = []
    start, longest = 0, 0
    for i, n in enumerate(lengths):
        rows = i - start
        if rows and (rows >= batch_size or max(longest, n) * (rows + 1) > max_batch_tokens):
            batches.append((start, i))
            start, longest = i, 0
        longest = max(longest, n)
    if start < len(lengths):
        batches.append((start, len(lengths)))
    return batches


def build_generated(loaded: LoadedTarget, prompts: Seq[Prompt], first_ids: Seq[Seq[int]], config: DataConfig,
                    seed: int) -> list[Built]:
    """Self-distillation for one batch: the target answers turn 1, then (``config.turns`` > 1) each
    later turn after its own answers; one sequence per prompt."""
    target, tok = loaded.target, loaded.tokenizer
    if config.temperature > 0:
        torch.manual_seed(seed)  # generate samples from the global generator; per batch, so resumption reproduces it
    capture = config.capture == "generate" and not config.ids_only
    rounds: list[list[list[int]]] = [[list(ids)] for ids in first_ids]
    answers: list[list[str]] = [[] for _ in prompts]
    results: list[tuple[Generation, torch.Tensor] | None] = [None] * len(prompts)
    generated = [0] * len(prompts)
    active = list(range(len(prompts)))
    for r in range(config.turns):
        if r > 0:
            going = []
            for i in active:
                p = prompts[i]
                if r >= len(p.turns):
                    continue
                ids = render(tok, list(p.turns[: r + 1]), answers[i], p.system)
                if not _fits(len(ids), config, target):
                    continue  # the conversation ends at the previous answer (a turn-boundary cut)
                try:
                    conversation_mask(rounds[i] + [ids], [], target.eos_token_ids)
                except AssemblyError:
                    continue
                rounds[i].append(ids)
                going.append(i)
            active = going
        if not active:
            break
        gens = generate_batch(target, [rounds[i][-1] for i in active], config.max_new_tokens, config.temperature,
                              features=capture)
        going = []
        for i, gen in zip(active, gens):
            response = gen.ids[gen.prompt_len :]
            generated[i] += int(response.shape[0])
            results[i] = (gen, conversation_mask(rounds[i], response.tolist(), target.eos_token_ids))
            if not gen.hit_max:
                answers[i].append(tok.decode(response[:-1].tolist(), skip_special_tokens=True))
                going.append(i)
        active = going
    built = []
    for i, result in enumerate(results):
        gen, mask = result
        built.append(Built(gen.ids, gen.features, mask, generated[i], gen.hit_max))
    if config.capture == "forward" and not config.ids_only:
        feats = teacher_forced(target, [b.ids for b in built])
        built = [Built(b.ids, f, b.loss_mask, b.generated, b.hit_max) for b, f in zip(built, feats)]
    return built


def build_fixed(loaded: LoadedTarget, prompts: Seq[Prompt], config: DataConfig) -> list[Built]:
    """Fixed responses (the data's own answers) for one batch: prompt + answer, teacher-forced."""
    target, tok = loaded.target, loaded.tokenizer
    eos = target.eos_token_ids
    built = []
    for p in prompts:
        k = min(config.turns, len(p.responses))
        while True:
            rounds = [render(tok, list(p.turns[: j + 1]), list(p.responses[:j]), p.system) for j in range(k)]
            response = tok(p.responses[k - 1], add_special_tokens=False)["input_ids"] + [eos[0]]
            hit = len(response) > config.max_new_tokens
            response = response[: config.max_new_tokens]
            try:
                if k > 1 and not _fits(len(rounds[-1]), config, target):
                    raise AssemblyError("too long")
                mask = conversation_mask(rounds, response, eos)
                break
            except AssemblyError:
                k -= 1  # cut on the turn boundary before; k = 1 always assembles
        ids = torch.tensor(rounds[-1] + response, dtype=torch.long)
        built.append(Built(ids, None, mask, 0, hit))
    if not config.ids_only:
        feats = teacher_forced(target, [b.ids for b in built])
        built = [Built(b.ids, f, b.loss_mask, b.generated, b.hit_max) for b, f in zip(built, feats)]
    return built


# ---- the store ---------------------------------------------------------------------------------
def target_identity(loaded: LoadedTarget) -> dict:
    from coral_bench.drafters.checkpoint import embedding_sha256

    t = loaded.target
    return {"name": loaded.name, "source": loaded.source, "dtype": loaded.dtype, "device": loaded.device,
            "hidden_size": t.hidden_size, "vocab_size": t.vocab_size, "num_layers": t.num_layers,
            "eos_token_ids": list(t.eos_token_ids), "embedding_sha256": embedding_sha256(t.embedding_weight())}


def _provenance(loaded: LoadedTarget, command: str) -> dict:
    import platform

    import transformers

    from coral_bench.run.provenance import coral_bench_version, git_hash

    return {"coral_bench_version": coral_bench_version(), "git_hash": git_hash(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": loaded.device,
            "threads": torch.get_num_threads(), "command": command or shlex.join(sys.argv),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _open_store(out: Path, manifest: dict, resume: bool, store_dtype: str, checked: tuple[str, ...]) -> StoreWriter:
    """A writer for ``out``: new, or (``resume``) the existing store if its ``checked`` keys match."""
    out = Path(out)
    manifest = json.loads(json.dumps(manifest))  # as it will read back: tuples become lists
    if (out / MANIFEST).exists():
        if not resume:
            raise DataError(f"{out} already holds a store; pass --resume to continue it, or choose another --out")
        existing = read_manifest(out)
        for key in checked:
            if existing.get(key) != manifest.get(key):
                raise DataError(f"cannot resume {out}: its {key!r} differs from this run's (same settings needed)")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a feature store (no {MANIFEST}); choose another --out")
    return StoreWriter(out, manifest, shard_tokens=_NEVER, dtype=DTYPES[store_dtype])


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: never a half-written file


def _write_manifest(out: Path, manifest: dict) -> None:
    _write_text(Path(out) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


class _Session:
    """Writes built sequences; cuts shards at batch boundaries; keeps stats and wall time with them."""

    def __init__(self, writer: StoreWriter, shard_tokens: int, total: int,
                 progress: Callable[[DataProgress], None] | None):
        self.writer = writer
        self.shard_tokens = shard_tokens
        self.total = total
        self.progress = progress
        self.start = time.perf_counter()
        self.wall_before = float(writer.manifest.get("wall_s", 0.0))
        self.pending_tokens = 0
        self.pending_stats = {"generated_tokens": 0, "hit_max_new_tokens": 0}
        self.pending_sequences = 0
        self.tokens = 0
        writer.manifest["sessions"] = int(writer.manifest.get("sessions", 0)) + 1

    def add(self, built: Seq[Built], last: bool) -> None:
        for b in built:
            feats = b.features if b.features is not None else torch.empty(b.ids.shape[0], 0)
            self.writer.add(b.ids, feats, b.loss_mask)
            self.pending_tokens += int(b.ids.shape[0])
            self.pending_stats["generated_tokens"] += b.generated
            self.pending_stats["hit_max_new_tokens"] += int(b.hit_max)
            self.tokens += int(b.loss_mask.sum())
        self.pending_sequences += len(built)
        if self.pending_tokens >= self.shard_tokens or last:
            self.flush()
        if self.progress is not None:
            self.progress(DataProgress(self.writer.sequences_done + self.pending_sequences, self.total, self.tokens,
                                       time.perf_counter() - self.start, len(self.writer.manifest["shards"])))

    def flush(self) -> None:
        stats = self.writer.manifest["stats"]
        for key, value in self.pending_stats.items():
            stats[key] = stats.get(key, 0) + value
        self.writer.manifest["wall_s"] = round(self.wall_before + time.perf_counter() - self.start, 3)
        self.writer.flush()  # writes the shard, then the manifest with the stats above
        self.pending_tokens = self.pending_sequences = 0
        self.pending_stats = dict.fromkeys(self.pending_stats, 0)

    def finish(self) -> dict:
        manifest = self.writer.manifest
        manifest["wall_s"] = round(self.wall_before + time.perf_counter() - self.start, 3)
        stats = manifest["stats"]
        stats["response_tokens"] = manifest["counts"]["loss_tokens"]
        stats["generated_tokens_per_s"] = round(stats["generated_tokens"] / manifest["wall_s"], 2) if manifest["wall_s"] else None
        manifest["complete"] = True
        manifest["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        _write_manifest(self.writer.path, manifest)
        return manifest


def _resume_point(done: int, batches: Seq[tuple[int, int]], out: Path) -> int:
    starts = [lo for lo, _ in batches] + [batches[-1][1] if batches else 0]
    if done not in starts:
        raise DataError(f"cannot resume {out}: its {done} sequences do not end on a batch boundary")
    return starts.index(done)


def generate_store(loaded: LoadedTarget, config: DataConfig, out: Path, resume: bool = False, command: str = "",
                   progress: Callable[[DataProgress], None] | None = None,
                   index: OverlapIndex | None = None, time_limit_s: float | None = None) -> dict:
    """Generate (or resume) the training store ``out``; returns its manifest. ``time_limit_s``: start
    no new batch after that much wall time and close the store with the prompts done so far (a
    random subset, since prompts are shuffled before batching); the manifest records the cut."""
    index = index or OverlapIndex.from_suites()
    selection = select_prompts(loaded, config, index)
    manifest = {
        "kind": KIND,
        "features": None if config.ids_only else {
            "what": "target last hidden state after the final norm (the input of lm_head)",
            "dtype": config.store_dtype},
        "target": target_identity(loaded),
        "chat_template_sha256": template_hash(loaded.tokenizer),
        "system_prompt": "the chat template's default (a record's own first system message is kept)",
        "prompts": {**selection.report, "order_file": PROMPT_ORDER},
        "generation": {**asdict(config), "sort_window_batches": SORT_WINDOW, "sampling":
                       "greedy" if config.temperature == 0 else "temperature only (top-k and top-p off)",
                       "n_batches": len(selection.batches)},
        "stats": {"generated_tokens": 0, "hit_max_new_tokens": 0},
        "complete": False,
        "provenance": _provenance(loaded, command),
    }
    writer = _open_store(out, manifest, resume, config.store_dtype, ("kind", "features", "target", "prompts", "generation"))
    if writer.manifest.get("complete"):
        return writer.manifest
    # Which prompt each sequence came from (store order); a sidecar, the store format is unchanged.
    _write_text(Path(out) / PROMPT_ORDER, "".join(p.key.replace("\n", " ") + "\n" for p in selection.prompts))
    first = _resume_point(writer.sequences_done, selection.batches, Path(out))
    session = _Session(writer, config.shard_tokens, len(selection.prompts), progress)
    for b in range(first, len(selection.batches)):
        if time_limit_s is not None and b > first and time.perf_counter() - session.start > time_limit_s:
            session.flush()
            writer.manifest["cut_by_time_limit"] = {"time_limit_s": time_limit_s, "batches_done": b,
                                                    "sequences_done": writer.sequences_done}
            break
        lo, hi = selection.batches[b]
        prompts = selection.prompts[lo:hi]
        if config.responses == "dataset":
            built = build_fixed(loaded, prompts, config)
        else:
            built = build_generated(loaded, prompts, selection.first_ids[lo:hi], config,
                                    seed=config.seed * 1_000_003 + b)
        session.add(built, last=b == len(selection.batches) - 1)
    return session.finish()


def features_from_ids(loaded: LoadedTarget, source: Path, out: Path, batch_size: int = 64,
                      max_batch_tokens: int = 1 << 15, store_dtype: str = "bfloat16", ids_only: bool = False,
                      shard_tokens: int = DEFAULT_SHARD_TOKENS, resume: bool = False, command: str = "",
                      progress: Callable[[DataProgress], None] | None = None,
                      max_sequences: int | None = None) -> dict:
    """A store with the ids and masks of ``source`` (an ids-only or full store) and features
    recomputed by a teacher-forced forward of ``loaded`` (or, with ``ids_only``, none: an export).
    ``max_sequences``: only the source's first N sequences (its prompts were shuffled before
    generation, so a prefix is a random subset; recorded in the manifest)."""
    if store_dtype not in STORE_DTYPES:
        raise DataError(f"unknown store dtype {store_dtype!r} (valid: {', '.join(STORE_DTYPES)})")
    if Path(source).resolve() == Path(out).resolve():
        raise DataError("--from-ids and --out must be different folders")
    store = FeatureStore(source)
    src = store.manifest
    if not src.get("complete", False):
        raise DataError(f"{source} is incomplete: finish it first (gen-data --resume)")
    identity = target_identity(loaded)
    want = (src.get("target") or {}).get("embedding_sha256")
    if want is not None and want != identity["embedding_sha256"]:
        raise DataError(f"{source} was generated by another target ({src['target'].get('name')}): "
                        "token embeddings differ")
    if max_sequences is not None and max_sequences < 1:
        raise DataError("--max-prompts must be >= 1")
    lengths = store.lengths()[:max_sequences]
    batches = plan_batches(lengths, batch_size, max_batch_tokens)
    from_ids = {"path": str(source), "sequences": len(lengths), "tokens": src["counts"]["tokens"],
                "generated_by": (src.get("target") or {}).get("name"),
                "batch_size": batch_size, "max_batch_tokens": max_batch_tokens, "shard_tokens": shard_tokens}
    if max_sequences is not None:
        from_ids.update(tokens=int(sum(lengths)), first_sequences_of=len(store))
    manifest = {
        "kind": KIND,
        "features": None if ids_only else {
            "what": "target last hidden state after the final norm (the input of lm_head)",
            "dtype": store_dtype, "computed": "teacher-forced forward (--from-ids)"},
        "target": identity,
        "chat_template_sha256": src.get("chat_template_sha256"),
        "system_prompt": src.get("system_prompt"),
        "prompts": src.get("prompts"),
        "generation": src.get("generation"),
        "from_ids": from_ids,
        # carried from the ids store (this pass generates nothing; the per-batch counts add zero)
        "stats": {key: (src.get("stats") or {}).get(key, 0) for key in ("generated_tokens", "hit_max_new_tokens")},
        "complete": False,
        "provenance": _provenance(loaded, command),
    }
    writer = _open_store(out, manifest, resume, store_dtype, ("kind", "features", "target", "prompts", "from_ids"))
    if writer.manifest.get("complete"):
        return writer.manifest
    if (Path(source) / PROMPT_ORDER).is_file():
        keys = (Path(source) / PROMPT_ORDER).read_text().splitlines(keepends=True)[: len(lengths)]
        _write_text(Path(out) / PROMPT_ORDER, "".join(keys))
    first = _resume_point(writer.sequences_done, batches, Path(out))
    session = _Session(writer, shard_tokens, len(lengths), progress)
    for b in range(first, len(batches)):
        lo, hi = batches[b]
        seqs = [store[i] for i in range(lo, hi)]
        feats = [None] * len(seqs) if ids_only else teacher_forced(loaded.target, [s.ids for s in seqs])
        built = [Built(s.ids, f, s.loss_mask, 0, False) for s, f in zip(seqs, feats)]
        session.add(built, last=b == len(batches) - 1)
    return session.finish()


__all__ = ["DataConfig", "DataError", "DataProgress", "StoreError", "features_from_ids", "generate_store",
           "select_prompts"]
