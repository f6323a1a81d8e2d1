"""Drafter training for EAGLE-2, HASS and CORAL (docs/methods.md §5): the unroll, the optimiser, resumable
checkpoints, held-out metrics, and data-parallel training with Hugging Face Accelerate (DDP).

One optimizer step = one global batch (``batching.plan_epoch``): every process runs its shard
through the n-step masked forward (``multistep.py``) under optional bf16 autocast, the losses
(``losses.py``) are normalised by global counts, and **one** backward follows (CORAL's CSRA couples
the steps). Then gradients are clipped by value (0.5) and AdamW (β = 0.9, 0.95) steps under a warmup
+ cosine/linear schedule.

Output folder ``out``::

    config.json, model.safetensors   the drafter in the EAGLE layout (bf16, no embedding copy), written
                                     at the end; its config's ``coral_bench`` section records the method,
                                     every setting, the data manifest hash, the budget and the git hash
    train-log.jsonl                  one line per optimizer step and per evaluation
    training-state/state.pt          model, optimizer, scheduler, RNG states and data position, every
                                     ``checkpoint_every`` steps and at the end (``resume=True`` continues)

Determinism: the data order is a function of (seed, epoch), the feature noise of (seed, step, store
index), so an interrupted and resumed run equals an uninterrupted one, and a 2-process run equals a
1-process run with the same global batches (fp64, up to summation order).

The settings live in ``settings.py``, the data it reads (store, split, batch plans, stored or online
features) in ``training_data.py``, the log records and progress display in ``reporting.py``, the
resumable state (position, state.pt, the log's truncation) in ``state.py``.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..drafters.checkpoint import save_checkpoint
from ..drafters.eagle_model import EagleConfig, EagleModel
from coral_bench.core.target import Target
from .batching import TrainBatch, feature_noise, mix_seed, shard
from .losses import (CombinedLoss, LossInputs, SingleProcess, TorchDistributed, combine, loss_parts)
from .multistep import MultiStepDrafter, step_valid
from .reporting import EvalResult, NullReporter, Reporter, StepLog
from .settings import METHODS, TrainError, TrainSettings
from .state import (LOG_FILE, STATE_DIR, STATE_FILE, Position, last_logged_eval, save_state, set_rng_states,
                    settings_differences, truncate_log)
from .store import read_manifest
from .training_data import TrainingData, check_store, most_frequent, training_counts

RESIDUAL_INIT_SCALE = 0.1
INIT_DESCRIPTIONS = {
    "identity": "fan-in normal weights, then fc's feature half = identity and o_proj, down_proj scaled by 0.1: "
                "at init f_hat(t+1) = f(t) + W_e embed(x(t+1)) + a small correction",
    "random": "fan-in normal weights (EagleModel.init_random)",
}


# ---- model --------------------------------------------------------------------------------------
@torch.no_grad()
def init_drafter(model: EagleModel, generator: torch.Generator, kind: str = "identity") -> None:
    """Initial weights. ``random``: fan-in normal everywhere (``EagleModel.init_random``).
    ``identity`` (default): the same, then fc's feature half = I and the residual branches (o_proj,
    down_proj) scaled by 0.1, so at init f̂_{t+1} ≈ f_t + W_e·embed(x_{t+1}) + a small correction: the
    drafter starts from "the next feature is the current one" and learns the change."""
    model.init_random(generator)
    if kind == "random":
        return
    h = model.config.hidden_size
    model.fc.weight[:, h:] = torch.eye(h, dtype=model.fc.weight.dtype, device=model.fc.weight.device)
    layer = model.layers[0]
    layer.self_attn.o_proj.weight.mul_(RESIDUAL_INIT_SCALE)
    layer.mlp.down_proj.weight.mul_(RESIDUAL_INIT_SCALE)


def drafter_config(target: Target) -> EagleConfig:
    return EagleConfig.from_dict(target.model.config.to_dict(), vocab_size=target.vocab_size,
                                 max_position_embeddings=target.max_context)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based): linear warmup, then decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


# ---- one batch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frozen:
    """The target's frozen embedding and LM head, in the dtypes training needs.

    ``vocab`` (token ids, ascending) restricts the head, hence every softmax of the loss, to those
    tokens: distributions are renormalised over them (the ``loss_vocab`` lever; ``None``: all)."""

    target: Target
    dtype: torch.dtype  # master dtype of the drafter
    vocab: torch.Tensor | None = None  # [V'] int64 on the target's device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target.embed(ids.to(self.target.device)).to(self.dtype)

    @cached_property
    def _rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:  # the head's [V', H] weight and bias
        head = self.target.model.get_output_embeddings()
        weight, bias = head.weight.detach(), getattr(head, "bias", None)
        if self.vocab is not None:
            weight = weight.index_select(0, self.vocab)
            bias = None if bias is None else bias.detach().index_select(0, self.vocab)
        return weight, bias

    def head(self, features: torch.Tensor) -> torch.Tensor:
        if self.vocab is None:
            return self.target.logits_from_features(features.to(self.target.dtype))
        weight, bias = self._rows
        return self.target.finish_logits(F.linear(features.to(weight.dtype), weight, bias))

    def full(self) -> "Frozen":
        """The same with the whole vocabulary (held-out metrics always use it)."""
        return self if self.vocab is None else Frozen(self.target, self.dtype)

    @torch.no_grad()
    def target_logp(self, features: torch.Tensor) -> torch.Tensor:  # [N, V'] exact, outside autocast
        with torch.autocast(features.device.type, enabled=False):
            logits = self.head(features)
            return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)


def _autocast(settings: TrainSettings, device: torch.device):
    if settings.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loss(module: torch.nn.Module, batch: TrainBatch, frozen: Frozen, settings: TrainSettings,
               world) -> tuple[CombinedLoss, LossInputs]:
    """The forward of one process's shard and the combined (globally normalised) loss."""
    device = frozen.target.device
    batch = batch.to(device)
    emb = frozen.embed(batch.next_ids)
    valid = step_valid(batch.valid, settings.steps, settings.history)
    chunked = settings.loss_chunk_rows > 0  # the vocabulary terms then never hold [N, V] at once
    target_logp = None if chunked else frozen.target_logp(batch.targets[batch.valid])
    with _autocast(settings, device):
        outputs = module(emb, batch.features, batch.positions)
        inputs = LossInputs(pred=outputs, valid=valid, target=batch.targets, rows=batch.valid,
                            target_logp=target_logp, head=frozen.head, world=world,
                            chunk_rows=settings.loss_chunk_rows, target_logp_of=frozen.target_logp)
        combined = combine(loss_parts(inputs, settings.loss), world)
    return combined, inputs


def _argmax(inputs: LossInputs, features: torch.Tensor, logp: torch.Tensor | None) -> torch.Tensor:  # [N]
    """The head's argmax per row: from ``logp`` when it exists, else block by block (chunked losses)."""
    if logp is not None:
        return logp.argmax(-1)
    rows = inputs.chunk_rows
    return torch.cat([inputs.head(features[a : a + rows]).argmax(-1) for a in range(0, features.shape[0], rows)])


@torch.no_grad()
def evaluate(core: MultiStepDrafter, data: TrainingData, frozen: Frozen, settings: TrainSettings,
             step: int, epoch: int) -> EvalResult | None:
    """Held-out losses and top-1 agreement by depth (one process, the whole eval split)."""
    if not data.eval_plan:
        return None
    was_training = core.training
    core.eval()
    one = SingleProcess()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    weights: dict[str, float] = {}
    hits = [0] * settings.steps
    seen = [0] * settings.steps
    slots = 0
    frozen = frozen.full()  # held-out losses and agreement over the whole vocabulary
    for batch_ids in data.eval_plan:
        batch = data.batch(batch_ids, frozen.dtype)
        slots += batch.slots
        combined, inputs = batch_loss(core, batch, frozen, settings, one)
        for name, value in combined.terms.items():
            n = combined.counts[name]
            if n:
                sums[name] = sums.get(name, 0.0) + value * n
                counts[name] = counts.get(name, 0) + n
        weights.update(combined.weights)
        greedy = _argmax(inputs, inputs.target[inputs.rows], inputs.target_logp)  # [N]
        t = batch.positions.to(inputs.rows.device)[inputs.rows]  # [N] slot index of each row
        for j in range(1, settings.steps + 1):
            keep = t >= j - 1  # true depth-j predictions only
            pred = None if inputs.chunk_rows else inputs.pred_logp(j)
            agree = _argmax(inputs, inputs.pred[j - 1][inputs.rows], pred) == greedy
            hits[j - 1] += int((agree & keep).sum())
            seen[j - 1] += int(keep.sum())
    core.train(was_training)
    terms = {k: sums[k] / counts[k] for k in sums}
    loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
    return EvalResult(step=step, epoch=epoch, loss=loss, terms=terms,
                      accuracy=tuple(h / max(s, 1) for h, s in zip(hits, seen)), slots=slots)


# ---- the run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    out: Path
    optimizer_steps: int
    tokens: int
    wall_time_s: float
    eval: EvalResult | None
    metadata: dict[str, Any]


def train(
    store_path: str | Path,
    out: str | Path,
    settings: TrainSettings,
    target: Target,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    target_name: str | None = None,
    command: str | None = None,
    time_limit_s: float | None = None,
    prefetch: bool | None = None,
) -> TrainResult:
    """Train a drafter for ``target`` on a feature store and write it to ``out`` (see the module doc).

    Under ``accelerate launch`` (or with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set) every process
    calls this with the same arguments; process 0 writes the files. ``time_limit_s`` stops cleanly
    after that much wall time in this call: the state and the drafter so far are saved (the
    drafter's ``budget.complete`` is false) and ``resume=True`` continues where it stopped.
    ``prefetch`` (default: on an accelerator) prepares the next batch (collate + feature noise, CPU
    work) in a thread while the current step runs; batches and results are the same either way.
    """
    from accelerate import Accelerator

    from coral_bench.run import provenance

    code_hash = provenance.git_hash()  # the code this process imported, not what HEAD is by the end
    acc = Accelerator(cpu=target.device.type == "cpu")
    world = TorchDistributed(acc.num_processes, acc.process_index) if acc.num_processes > 1 else SingleProcess()
    is_main = acc.is_main_process
    reporter = reporter if (reporter is not None and is_main) else NullReporter()
    out = Path(out)
    state_path = out / STATE_DIR / STATE_FILE
    log_path = out / LOG_FILE
    master = torch.float64 if settings.dtype == "fp64" else torch.float32
    target.model.requires_grad_(False)  # frozen embedding and LM head
    check_store(read_manifest(Path(store_path)), target, store_path, settings.features)  # before reading any shard
    data = TrainingData.open(Path(store_path), settings, acc.num_processes, target)
    vocab, coverage = None, 1.0
    if settings.loss_vocab:
        counts = training_counts(data, target.vocab_size)
        vocab = most_frequent(counts, settings.loss_vocab)
        coverage = float(counts[vocab].sum()) / max(int(counts.sum()), 1)
        vocab = vocab.to(target.device)
    if settings.max_sequences is not None:  # after the counts: a capped run restricts to the same vocabulary
        data = data.with_train_cap(settings.max_sequences, settings, acc.num_processes)
    frozen = Frozen(target, master, vocab)
    total_steps = sum(len(p) for p in data.plans)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, round(0.05 * total_steps))

    model = EagleModel(drafter_config(target))
    init_drafter(model, torch.Generator().manual_seed(mix_seed(settings.seed, 0x1417)), settings.init)
    model = model.to(device=target.device, dtype=master)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, settings.schedule))

    position = Position()
    if state_path.exists():
        if not resume:
            raise TrainError(f"{out} holds a training state: continue it with --resume, or choose another --out")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        diff = settings_differences(state["settings"], settings)
        if diff:
            raise TrainError(f"cannot resume {out} with different settings: {'; '.join(diff)}")
        if state["manifest_sha256"] != data.manifest_sha256:
            raise TrainError(f"cannot resume {out}: the feature store changed since the checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        position = Position(**state["position"])
        if is_main:
            truncate_log(log_path, position.optimizer_steps)
    elif (out / "config.json").exists():
        raise TrainError(f"{out} already holds a drafter; choose another --out")
    acc.wait_for_everyone()

    core = MultiStepDrafter(model, settings.steps, settings.detach_step_inputs).train()
    module, optimizer = acc.prepare(core, optimizer)
    rank, processes = acc.process_index, acc.num_processes

    def save() -> None:
        if is_main:
            save_state(state_path, model, optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                       scheduler, position, settings, data.manifest_sha256)

    def log(record: dict[str, Any]) -> None:
        if is_main:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    last_eval: EvalResult | None = None
    started = time.perf_counter()
    stopped_early = False
    reporter.start(total_steps, position.optimizer_steps, f"{settings.method} · {out.name}")
    prefetch = target.device.type != "cpu" if prefetch is None else prefetch
    batches = _Batches(data, settings, master, rank, processes, ThreadPoolExecutor(1) if prefetch else None)
    try:
        epoch, b = position.epoch, position.batch
        while epoch < settings.epochs:
            plan = data.plans[epoch]
            while b < len(plan):
                t0 = time.perf_counter()
                global_batch = plan[b]
                batch = batches.get(epoch, b, position.optimizer_steps)
                combined, _ = batch_loss(module, batch, frozen, settings, world)
                # DDP averages gradients over processes; the shares sum to the global loss.
                acc.backward(combined.local * processes)
                acc.clip_grad_value_(model.parameters(), settings.grad_clip_value)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                slots = data.slots_of(global_batch)
                b += 1
                position = Position(epoch, b, position.optimizer_steps + 1, position.tokens + slots,
                                    position.wall_time_s + dt)
                record = StepLog(step=position.optimizer_steps, epoch=epoch, lr=lr, loss=combined.value,
                                 terms=combined.terms, slots=slots, tokens=position.tokens,
                                 tokens_per_s=slots / dt if dt > 0 else 0.0, elapsed_s=position.wall_time_s,
                                 total_steps=total_steps)
                log(record.to_json())
                if b == len(plan):  # end of epoch: held-out metrics (process 0), then move on
                    if is_main:
                        last_eval = evaluate(core, data, frozen, settings, position.optimizer_steps, epoch)
                        if last_eval is not None:
                            log(last_eval.to_json())
                            reporter.evaluated(last_eval)
                    position = Position(epoch + 1, 0, position.optimizer_steps, position.tokens, position.wall_time_s)
                    acc.wait_for_everyone()
                if settings.checkpoint_every and position.optimizer_steps % settings.checkpoint_every == 0:
                    save()
                reporter.step(record)
                if time_limit_s is not None and _out_of_time(acc, started, time_limit_s):
                    stopped_early = True
                    break
            if stopped_early:
                break
            epoch, b = position.epoch, position.batch
        save()
    finally:
        batches.close()
        reporter.close()

    if last_eval is None and is_main and state_path.exists() and position.optimizer_steps:
        last_eval = last_logged_eval(log_path)
    metadata = {
        "method": settings.method,
        "description": METHODS[settings.method].description,
        "loss": settings.loss.to_dict(),
        "settings": settings.to_dict(),
        "multistep": {"steps": settings.steps, "history": settings.history,
                      "detach_step_inputs": settings.detach_step_inputs,
                      "attention": "step-1 keys at slots <= t-(j-1) + one key per earlier step at t-(j-i), "
                                   "RoPE at token positions"},
        "optimizer": {"name": "AdamW", "lr": settings.lr, "betas": list(settings.betas),
                      "weight_decay": settings.weight_decay, "warmup_steps": warmup, "schedule": settings.schedule,
                      "grad_clip": {"by": "value", "value": settings.grad_clip_value}},
        "feature_noise": {"kind": "uniform, relative to each slot's feature RMS",
                          "formula": "f_t + U(-a, a) * rms(f_t)", "a": settings.feature_noise},
        "objective": "sum over steps j of step_decay^(j-1) * (regression_weight * SmoothL1_j + ce_weight * CE_j "
                     "+ distill_weight * TopK_j) + csra_weight * mean over ordered step pairs of InfoNCE; every "
                     "term is a mean over the global batch's valid slots; one backward",
        "init": {"kind": settings.init, "description": INIT_DESCRIPTIONS[settings.init]},
        "data": {"store": str(store_path), "manifest_sha256": data.manifest_sha256,
                 "target": data.store.manifest.get("target"), "train_sequences": len(data.train),
                 "eval_sequences": len(data.eval), "skipped_sequences": data.skipped,
                 "batch_tokens": settings.batch_tokens, "batching": "length-bucketed, padded, token budget"},
        "budget": {"epochs": settings.epochs, "optimizer_steps": position.optimizer_steps,
                   "tokens": position.tokens, "wall_time_s": round(position.wall_time_s, 3),
                   "processes": processes, "dtype": settings.dtype,
                   "complete": position.epoch >= settings.epochs,
                   "distributed": "DDP (Accelerate)" if processes > 1 else "single process"},
        "eval": None if last_eval is None else last_eval.to_json(),
        "loss_vocab": None if vocab is None else {
            "tokens": settings.loss_vocab, "rule": "most frequent loss tokens of the training split",
            "coverage": round(coverage, 6), "ids_sha256": hashlib.sha256(vocab.cpu().numpy().tobytes()).hexdigest()},
        "deviations": _deviations(settings),
        "target": target_name or target.name,
        "git_hash": code_hash,
        "coral_bench_version": provenance.coral_bench_version(),
        "torch": torch.__version__,
        "command": command,
    }
    if is_main:
        save_checkpoint(out, model, target.embedding_weight(), target.max_context, metadata=metadata)
    acc.wait_for_everyone()
    return TrainResult(out=out, optimizer_steps=position.optimizer_steps, tokens=position.tokens,
                       wall_time_s=position.wall_time_s, eval=last_eval, metadata=metadata)


class _Batches:
    """Each process's shard of the global batch at (epoch, index), with its feature noise; with a
    thread pool, the next one is prepared while the caller trains on this one."""

    def __init__(self, data: TrainingData, settings: TrainSettings, dtype: torch.dtype, rank: int, processes: int,
                 pool: ThreadPoolExecutor | None):
        self.data, self.settings, self.dtype, self.rank, self.processes = data, settings, dtype, rank, processes
        self.pool = pool
        self.pending: tuple[tuple[int, int, int], Future] | None = None

    def make(self, epoch: int, b: int, step: int) -> TrainBatch:
        batch = self.data.batch(shard(self.data.plans[epoch][b], self.data.lengths, self.rank, self.processes),
                                self.dtype)
        noise = feature_noise(batch, self.settings.feature_noise, self.settings.seed, step)
        return replace(batch, features=batch.features + noise)

    def get(self, epoch: int, b: int, step: int) -> TrainBatch:
        """The batch the optimizer step ``step`` trains on (``step`` seeds its noise)."""
        ready = None
        if self.pending is not None:
            key, future = self.pending
            self.pending = None
            ready = future.result() if key == (epoch, b, step) else None
        batch = ready if ready is not None else self.make(epoch, b, step)
        if self.pool is not None:
            nxt = (epoch, b + 1) if b + 1 < len(self.data.plans[epoch]) else (epoch + 1, 0)
            if nxt[0] < len(self.data.plans):
                self.pending = ((*nxt, step + 1), self.pool.submit(self.make, *nxt, step + 1))
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _out_of_time(acc, started: float, limit_s: float) -> bool:
    """Whether any process has run past ``limit_s`` (all processes stop at the same step)."""
    late = torch.tensor([float(time.perf_counter() - started > limit_s)], device=acc.device)
    return bool(acc.reduce(late, reduction="max").item()) if acc.num_processes > 1 else bool(late.item())


def _deviations(settings: TrainSettings) -> list[str]:
    notes = [
        "feature noise is U(-a, a) times each slot's feature RMS (EAGLE: U(-0.1, 0.1) * 512 / length, absolute)",
        "soft cross-entropy over the full vocabulary" if not settings.loss_vocab else
        f"soft cross-entropy and top-K distillation over the {settings.loss_vocab} most frequent training tokens, "
        "target and drafter distributions renormalised over them (frequency-restricted vocabulary; held-out "
        "metrics use the full vocabulary)",
        "batches are length-bucketed under a padded-token budget (EAGLE/HASS: fixed sequences per batch)",
    ]
    if settings.loss.distill_weight:
        notes.append("top-K distillation on from the first step in one schedule (HASS: weight 0 first, "
                     "then weight 1 at a lower lr)")
    if settings.steps > 1:
        notes.append(f"slots t < j - 1 at step j: {settings.history} "
                     + ("(real feature kept, as HASS)" if settings.history == "keep-real" else "(dropped from the loss)"))
    return notes
