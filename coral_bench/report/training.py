"""The report section on how each trained drafter was made: method, budget, held-out agreement and
the tuned loss settings, from what every run records about the weights it loaded."""

from __future__ import annotations

from typing import Sequence

from .blocks import DASH, Section, Table, Text
from coral_bench.rundir.reader import DrafterTraining, Run

# Short names of the tuned loss settings (drafters.eagle.TUNED_LOSS_SETTINGS), in display order.
_SETTING_NAMES = (("distill_k", "top-K"), ("step_decay", "step decay"), ("csra_weight", "λ"),
                  ("csra_temperature", "τ_c"), ("csra_anchor", "anchor"))


def _settings(t: DrafterTraining) -> str:
    loss = dict(t.loss)
    shown = []
    for key, name in _SETTING_NAMES:
        if key == "distill_k" and not loss.get("distill_weight"):
            continue  # no top-K distillation term (EAGLE)
        if key.startswith("csra") and not loss.get("csra_weight"):
            continue  # no CSRA term (EAGLE, HASS)
        if key == "step_decay" and (t.steps or 1) < 2:
            continue  # one step: nothing to decay
        if key in loss:
            shown.append(f"{name} {loss[key]}")
    if t.history and (t.steps or 1) > 1:
        shown.append(f"history {t.history}")
    return ", ".join(shown) or DASH


def _hours(seconds: float | None) -> str:
    return DASH if seconds is None else f"{seconds / 3600:.2f}"


def training(runs: Sequence[Run]) -> Section | None:
    """One row per distinct trained weights file, in the order drafters (timed, then replayed) first appear."""
    seen: dict[str, tuple] = {}
    for r in runs:
        for m in (*r.drafters, *r.replays):  # timed drafters, then replayed ones
            t = m.training
            if t is None or m.weights_sha256 in seen:
                continue
            router = DASH if t.router_steps is None else f"{t.router_steps} steps, {_hours(t.router_wall_time_s)} h"
            seen[m.weights_sha256] = (
                m.label, t.method, str(t.steps or DASH), DASH if t.epochs is None else f"{t.epochs:g}", str(t.optimizer_steps or DASH),
                f"{t.tokens:,}" if t.tokens else DASH, _hours(t.wall_time_s),
                " / ".join(f"{a:.3f}" for a in t.heldout_top1) or DASH, _settings(t), router,
                "yes" if t.complete else "no (cut)", m.weights_sha256[:12])
    if not seen:
        return None
    columns = ("drafter", "method", "unroll steps", "epochs", "optimizer steps", "training tokens", "wall h",
               "held-out top-1 by depth", "tuned settings", "router training", "complete", "weights sha256")
    note = Text("From the checkpoint each run loaded (its `coral_bench` section). Training tokens: response-token "
                "slots summed over epochs; a method with n unroll steps runs the drafter n times per slot, so it "
                "spends about n× the compute. Wall hours are summed over resumed sittings and may include time "
                "shared with other work: a budget, not a timing. Held-out top-1: agreement with the target's "
                "argmax on the training store's held-out split at depth 1, 2, 3 (a development measure).", "note")
    return Section("training", "How the drafters were trained", (Table(columns, tuple(seen.values())), note))
