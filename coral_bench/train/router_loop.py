"""Stage 2 of CORAL's LM-head router (docs/methods.md §6): freeze a trained drafter, train only the router.

The stage-1 drafter (any EAGLE-format checkpoint) is unrolled over the feature store exactly as in
multi-step training (``MultiStepDrafter``: depth j ≥ 2 features are the drafter's own predictions, as
at inference) without noise and without gradient. Each valid slot t at depth j (t ≥ j − 1, so every
depth-j row is a true depth-j prediction) gives one router example: input G^{(j)}_t, the drafter's
output feature; label the target's distribution p = softmax(lm_head(f_{t+1})) reduced to the groups:

- ``mass`` (default): the probability mass of each group, Σ_{x∈g} p(x), with soft cross-entropy;
- ``argmax``: the group of the target's argmax, with cross-entropy.

Held-out recall by depth, for several router k: of the target's argmax (its group is selected), of
the drafter's own top ``recall_top_k`` tokens under the full head (fraction whose group is selected),
and the target mass inside the selected groups. With k = N all three are 1.

Output folder: the stage-1 drafter's weights unchanged (EAGLE layout, its own dtype) + ``router.*``
tensors + ``vocab.counts`` (training loss-token frequencies), described in config.json's
``coral_bench.router`` (settings, grouping, held-out recall), and ``router-log.jsonl`` (one line per
optimizer step and per evaluation). Not resumable: the router trains in minutes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..drafters.checkpoint import load_checkpoint, save_checkpoint
from ..drafters.router import ROUTER_WIDTH, SCORES, Router, router_description
from ..drafters.vocab_grouping import CLUSTER_ITERATIONS, COUNTS_KEY, PARTITIONS, VocabGrouping, make_grouping
from coral_bench.core.target import Target
from .batching import TrainBatch, mix_seed
from .loop import Frozen, lr_factor
from .multistep import MultiStepDrafter
from .settings import settings_for
from .store import read_manifest
from .training_data import TrainingData, check_store, training_counts

LOG_FILE = "router-log.jsonl"
LABELS = ("mass", "argmax")
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


class RouterTrainError(ValueError):
    """Router training that cannot start (bad settings, unusable drafter or data)."""


@dataclass(frozen=True)
class RouterSettings:
    """Everything that determines a router training run (recorded in the checkpoint)."""

    groups: int  # N
    k: int  # router_k: groups per tree node at inference (recorded default; recall is reported for several)
    partition: str = "contiguous"
    label: str = "mass"
    epochs: int = 1
    lr: float = 1e-3  # AdamW, warmup 5 % then cosine (untuned)
    steps: int = 3  # unroll depth: recall and training rows for depths 1…steps
    width: int = ROUTER_WIDTH  # h
    batch_tokens: int = 2048
    eval_fraction: float = 0.05
    recall_top_k: int = 4  # the tree's top_k: recall of the drafter's own top tokens
    score: str = "renorm"  # recorded default for inference (@score overrides)
    seed: int = 0
    dtype: str = "fp32"  # the frozen drafter and the router: fp32 or fp64
    cluster_iterations: int = CLUSTER_ITERATIONS
    head_chunk: int = 512  # rows per full-head evaluation when building labels (memory: rows × V floats)
    max_sequences: int | None = None  # train on the first N training sequences only (labels cost 1 + steps
    # full-head products per slot: the whole store is hours on a CPU, a small router needs far less)

    def __post_init__(self) -> None:
        checks = [
            (self.groups >= 1, "router groups must be >= 1"),
            (1 <= self.k <= self.groups, f"router k must be in 1…{self.groups}"),
            (self.partition in PARTITIONS, f"partition must be one of {PARTITIONS}"),
            (self.label in LABELS, f"label must be one of {LABELS}"),
            (self.score in SCORES, f"score must be one of {SCORES}"),
            (self.dtype in DTYPES, f"dtype must be one of {tuple(DTYPES)}"),
            (self.epochs >= 1 and self.steps >= 1, "epochs and steps must be >= 1"),
            (self.lr > 0 and self.width >= 1 and self.recall_top_k >= 1, "lr, width and recall_top_k must be > 0"),
            (self.batch_tokens >= 1 and self.head_chunk >= 1, "batch_tokens and head_chunk must be >= 1"),
            (0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)"),
            (self.max_sequences is None or self.max_sequences >= 1, "max_sequences must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise RouterTrainError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recall_ks(self) -> tuple[int, ...]:
        """Router k values recall is reported for: powers of two up to N, plus k and N."""
        ks = {self.k, self.groups} | {2 ** i for i in range(self.groups.bit_length()) if 2 ** i <= self.groups}
        return tuple(sorted(ks))


# ---- examples ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterRows:
    """Router examples of one batch, every depth stacked."""

    features: torch.Tensor  # [M, H] G^{(j)}_t, the drafter's output (router input)
    depth: torch.Tensor  # [M] int64 j (1-based)
    mass: torch.Tensor  # [M, N] target probability mass per group
    target_group: torch.Tensor  # [M] int64 group of the target's argmax
    draft_groups: torch.Tensor  # [M, r] int64 groups of the drafter's top-r tokens under the full head


@torch.no_grad()
def router_rows(core: MultiStepDrafter, batch: TrainBatch, frozen: Frozen, grouping: VocabGrouping,
                recall_top_k: int, chunk: int) -> RouterRows:
    """Unroll the frozen drafter over a batch and label every valid depth-j slot (t ≥ j − 1).

    The target's labels of slot t do not depend on the depth, so its head runs once per valid slot."""
    device = frozen.target.device
    batch = batch.to(device)
    outputs = core(frozen.embed(batch.next_ids), batch.features, batch.positions)  # steps × [B, T, H]
    group_of = grouping.group_of.to(device)
    slot = batch.positions[batch.valid]  # [n] slot index t of each valid row (row-major, as out[valid])
    f_next = batch.targets[batch.valid]  # [n, H]
    mass, tgroup = [], []
    for lo in range(0, f_next.shape[0], chunk):
        logp = frozen.target_logp(f_next[lo : lo + chunk])  # [c, V] the exact target distribution
        p = logp.exp()
        mass.append(torch.zeros(p.shape[0], grouping.groups, dtype=p.dtype, device=device).index_add_(1, group_of, p))
        tgroup.append(group_of[logp.argmax(-1)])
    mass_all, tgroup_all = torch.cat(mass), torch.cat(tgroup)
    feats, depths, masses, tgroups, dgroups = [], [], [], [], []
    for j, out in enumerate(outputs, start=1):
        keep = slot >= j - 1  # true depth-j predictions only
        g_feat = out[batch.valid][keep]  # [m, H]
        for lo in range(0, g_feat.shape[0], chunk):
            draft = frozen.head(g_feat[lo : lo + chunk])  # [c, V] the drafter's own full-head logits
            dgroups.append(group_of[draft.topk(min(recall_top_k, draft.shape[-1]), dim=-1).indices])
        feats.append(g_feat)
        depths.append(torch.full((g_feat.shape[0],), j, dtype=torch.long, device=device))
        masses.append(mass_all[keep])
        tgroups.append(tgroup_all[keep])
    return RouterRows(torch.cat(feats), torch.cat(depths), torch.cat(masses), torch.cat(tgroups), torch.cat(dgroups))


def router_loss(logits: torch.Tensor, rows: RouterRows, label: str) -> torch.Tensor:  # logits [M, N]
    logp = torch.log_softmax(logits, -1)
    if label == "mass":  # soft cross-entropy against the group masses
        return -(rows.mass.to(logp.dtype) * logp).sum(-1).mean()
    return F.nll_loss(logp, rows.target_group)


# ---- evaluation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterRecall:
    """Held-out recall of one router k, by depth (index j − 1)."""

    k: int
    target_argmax: tuple[float, ...]  # [steps] the target argmax's group is selected
    drafter_top: tuple[float, ...]  # [steps] fraction of the drafter's top-r tokens whose group is selected
    mass: tuple[float, ...]  # [steps] target probability mass inside the selected groups


@dataclass(frozen=True)
class RouterEval:
    step: int
    epoch: int
    loss: float
    rows: tuple[int, ...]  # [steps] held-out examples per depth
    recall: tuple[RouterRecall, ...]  # one per k of RouterSettings.recall_ks()

    def to_json(self) -> dict[str, Any]:
        return {"kind": "eval", "step": self.step, "epoch": self.epoch, "loss": self.loss, "rows": list(self.rows),
                "recall": [{"k": r.k, "target_argmax": list(r.target_argmax), "drafter_top": list(r.drafter_top),
                            "mass": list(r.mass)} for r in self.recall]}

    def at(self, k: int) -> RouterRecall:
        return next(r for r in self.recall if r.k == k)


@torch.no_grad()
def evaluate_router(router: Router, core: MultiStepDrafter, data: TrainingData, frozen: Frozen,
                    grouping: VocabGrouping, settings: RouterSettings, step: int, epoch: int) -> RouterEval | None:
    if not data.eval_plan:
        return None
    ks = settings.recall_ks()
    steps = settings.steps
    hit_t = torch.zeros(len(ks), steps, dtype=torch.float64)
    hit_d = torch.zeros_like(hit_t)
    mass = torch.zeros_like(hit_t)
    count = torch.zeros(steps, dtype=torch.float64)
    loss_sum = 0.0
    for batch_ids in data.eval_plan:
        rows = router_rows(core, data.batch(batch_ids, frozen.dtype), frozen, grouping,
                           settings.recall_top_k, settings.head_chunk)
        logits = router(rows.features)
        loss_sum += float(router_loss(logits, rows, settings.label)) * rows.depth.numel()
        order = logits.argsort(dim=-1, descending=True)  # [M, N]
        count += torch.bincount(rows.depth - 1, minlength=steps).double().cpu()
        for i, k in enumerate(ks):
            sel = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, order[:, :k], True)  # [M, N]
            t_hit = sel.gather(1, rows.target_group[:, None])[:, 0].double()
            d_hit = sel.gather(1, rows.draft_groups).double().mean(-1)
            m_in = (rows.mass * sel).sum(-1).double()
            for values, acc in ((t_hit, hit_t), (d_hit, hit_d), (m_in, mass)):
                acc[i] += torch.zeros(steps, dtype=torch.float64).index_add_(0, (rows.depth - 1).cpu(), values.cpu())
    denom = count.clamp_min(1)
    recall = tuple(RouterRecall(k, tuple((hit_t[i] / denom).tolist()), tuple((hit_d[i] / denom).tolist()),
                                tuple((mass[i] / denom).tolist())) for i, k in enumerate(ks))
    return RouterEval(step, epoch, loss_sum / max(float(count.sum()), 1.0), tuple(int(c) for c in count), recall)


# ---- the run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterResult:
    out: Path
    optimizer_steps: int
    rows: int  # router examples trained on (all depths, all epochs)
    wall_time_s: float
    grouping: dict[str, Any]
    head_copy_bytes: int  # the permuted head copy inference will make (0 for contiguous)
    eval: RouterEval | None
    metadata: dict[str, Any]


def _init_router(router: Router, seed: int) -> None:
    gen = torch.Generator().manual_seed(mix_seed(seed, 0x2047E))
    with torch.no_grad():
        for name, p in router.named_parameters():
            p.copy_(torch.zeros(p.shape) if name.endswith("bias") else
                    torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def train_router(
    drafter: str | Path,
    store_path: str | Path,
    out: str | Path,
    settings: RouterSettings,
    target: Target,
    *,
    progress: Callable[[int, int, float], None] | None = None,  # (step, total, loss) after each step
    target_name: str | None = None,
    command: str | None = None,
) -> RouterResult:
    """Train a router for the stage-1 ``drafter`` on ``store_path`` and write the routed drafter to ``out``."""
    from coral_bench.run import provenance

    out = Path(out)
    if (out / "config.json").exists():
        raise RouterTrainError(f"{out} already holds a drafter; choose another --out")
    master = DTYPES[settings.dtype]
    ckpt = load_checkpoint(drafter, target.embedding_weight())  # a checkpoint with a router: its router is replaced
    saved_dtype = ckpt.state["fc.weight"].dtype
    model = ckpt.build_model(dtype=master, device=target.device).requires_grad_(False)
    target.model.requires_grad_(False)
    frozen = Frozen(target, master)
    check_store(read_manifest(Path(store_path)), target, store_path)
    # The drafter's data plan (usable sequences, held-out split, length-bucketed batches) with these settings.
    plan_settings = settings_for("eagle2", epochs=settings.epochs, batch_tokens=settings.batch_tokens,
                                 eval_fraction=settings.eval_fraction, seed=settings.seed)
    data = TrainingData.open(Path(store_path), plan_settings, 1, target)
    vocab = target.vocab_size
    if settings.groups > vocab:
        raise RouterTrainError(f"router groups {settings.groups} exceed the vocabulary {vocab}")
    counts = training_counts(data, vocab)  # over the whole training split, before any cap
    if settings.max_sequences is not None:
        data = data.with_train_cap(settings.max_sequences, plan_settings, 1)
    grouping = make_grouping(settings.partition, settings.groups, vocab=vocab, head=target.lm_head_weight(),
                             counts=counts, seed=settings.seed, source=f"loss tokens of the training split of {store_path}")

    core = MultiStepDrafter(model, settings.steps).eval()
    router = Router(target.hidden_size, settings.groups, settings.width)
    _init_router(router, settings.seed)
    router = router.to(device=target.device, dtype=master)
    optimizer = torch.optim.AdamW(router.parameters(), lr=settings.lr, betas=(0.9, 0.95))
    total = sum(len(p) for p in data.plans)
    warmup = max(1, round(0.05 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, "cosine"))

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    log_path.write_text("")

    def log(record: dict[str, Any]) -> None:
        with log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    step, seen_rows, wall = 0, 0, 0.0
    last_eval: RouterEval | None = None
    for epoch, plan in enumerate(data.plans):
        for batch_ids in plan:
            t0 = time.perf_counter()
            rows = router_rows(core, data.batch(batch_ids, master), frozen, grouping,
                               settings.recall_top_k, settings.head_chunk)
            loss = router_loss(router(rows.features), rows, settings.label)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            step += 1
            seen_rows += rows.depth.numel()
            wall += time.perf_counter() - t0
            log({"kind": "step", "step": step, "epoch": epoch, "lr": lr, "loss": value,
                 "rows": rows.depth.numel(), "elapsed_s": round(wall, 3)})
            if progress is not None:
                progress(step, total, value)
        last_eval = evaluate_router(router, core, data, frozen, grouping, settings, step, epoch)
        if last_eval is not None:
            log(last_eval.to_json())

    head_copy = 0 if grouping.is_identity else vocab * target.hidden_size * target.lm_head_weight().element_size()
    training = {
        "protocol": "two-stage (CORAL): stage-1 drafter frozen, only the router trained, on the stage-1 "
                    "drafter's multi-step unroll (depth j >= 2 features self-predicted, no feature noise)",
        "settings": settings.to_dict(),
        "label": {"mass": "soft cross-entropy against the target's probability mass per group",
                  "argmax": "cross-entropy against the group of the target's argmax"}[settings.label],
        "rows": "every valid slot t >= j - 1 at depth j = 1..steps, equally weighted",
        "optimizer": {"name": "AdamW", "lr": settings.lr, "betas": [0.9, 0.95], "warmup_steps": warmup,
                      "schedule": "cosine"},
        "stage1": {"checkpoint": str(drafter), "method": ckpt.metadata.get("method"),
                   "weights_dtype": str(saved_dtype).removeprefix("torch.")},
        "data": {"store": str(store_path), "manifest_sha256": data.manifest_sha256,
                 "train_sequences": len(data.train), "eval_sequences": len(data.eval)},
        "budget": {"optimizer_steps": step, "rows": seen_rows, "wall_time_s": round(wall, 3)},
        "eval": None if last_eval is None else last_eval.to_json(),
        "log": LOG_FILE,
        "target": target_name or target.name,
        "git_hash": provenance.git_hash(),
        "coral_bench_version": provenance.coral_bench_version(),
        "command": command,
    }
    metadata = {**ckpt.metadata,
                "router": router_description(grouping, router, settings.k, settings.score, not grouping.is_identity,
                                             head_copy_bytes=head_copy, training=training)}
    extras = {**{k: v.to(torch.float32) for k, v in router.tensors().items()}, **grouping.tensors(),
              COUNTS_KEY: counts}
    save_checkpoint(out, ckpt.build_model(dtype=saved_dtype), target.embedding_weight(), target.max_context,
                    metadata=metadata, dtype=saved_dtype, extras=extras)
    return RouterResult(out, step, seen_rows, wall, grouping.describe(), head_copy, last_eval, metadata)
