"""A run directory loaded for reporting: results.json, samples.jsonl and cycles.jsonl, read-only.

Nothing here imports torch or a model: a report is rendered from the result files alone. The
directory is never modified (``results.read_samples`` would truncate an unfinished last line, so
samples are read here). Every value the sections use is lifted into a frozen dataclass; fields
the results schema adds later (``speedup_predicted``, ``lm_head_share``, ``profile``) are optional.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from coral_bench.rundir import layout as rd
from coral_bench.core.records import SampleRecord
from coral_bench.metrics.stats import question_taus

SUPPORTED_SCHEMA = rd.SCHEMA_VERSION
ORACLE = "oracle"


class ReportError(ValueError):
    """Input a report cannot be made from: one line that says what is wrong and where."""


@dataclass(frozen=True)
class Group:
    """One category or turn of one method: ``by_category`` / ``by_turn`` in results.json."""

    name: str
    samples: int
    tau_pooled: float | None
    tokens_per_s: float | None


@dataclass(frozen=True)
class DrafterTraining:
    """How a trained drafter's weights were made: ``weights.trained`` in results.json
    (``drafters.eagle.training_summary`` of its checkpoint)."""

    method: str
    steps: int | None  # unroll steps per slot: drafter forwards per training token
    epochs: float | None
    optimizer_steps: int | None
    tokens: int | None  # training slots (response tokens) summed over epochs
    wall_time_s: float | None
    complete: bool
    heldout_top1: tuple[float, ...]  # by depth
    loss: tuple[tuple[str, Any], ...]  # the tuned loss settings, sorted by name
    history: str | None
    router_steps: int | None  # routed drafters: the router's own training
    router_wall_time_s: float | None


@dataclass(frozen=True)
class EqualityCounts:
    """Greedy equality with vanilla (docs/methods.md §4), in either recorded form.

    ``rule`` "measured": each output judged on its own prompt against a measured noise bound
    (``bound``); "tie rule": results from before, where differences below a fixed tie threshold (and
    every later turn after one) were excused — their ``numerical`` counts ties and after-ties.
    """

    pairs: int
    identical_to_run: int  # outputs equal to the run's vanilla samples
    identical: int
    numerical: int
    divergent: int
    rule: str
    bound: float | None = None

    @classmethod
    def from_record(cls, rec: dict) -> "EqualityCounts | None":
        if "pairs" not in rec or "equal_to_vanilla" not in rec:
            return None  # T > 0: not checked
        pairs = int(rec["pairs"])
        same = round(float(rec["equal_to_vanilla"]) * pairs)
        judged = rec.get("equality")
        if isinstance(judged, dict):
            bound = (judged.get("noise_bound") or {}).get("value")
            return cls(pairs, same, int(judged["identical"]), int(judged["numerical"]), int(judged["divergent"]),
                       "measured", _opt_float(bound))
        excused = len(rec.get("ties") or ()) + len(rec.get("after_ties") or ())
        return cls(pairs, int(rec["identical"]), int(rec["identical"]), excused, len(rec.get("mismatches") or ()),
                   "tie rule")


@dataclass(frozen=True)
class MethodResult:
    """One method's record (baseline, drafter or peer), as results.json holds it (stats.MethodSummary)."""

    label: str
    kind: str  # "baseline", "drafter" or "peer"
    drafter: str | None  # registry name of a drafter (the label may differ: pl2=prompt-lookup)
    tree: str | None
    samples: int
    questions: int
    new_tokens: int
    wall_s: float
    prefill_s: float | None
    tokens_per_s: float | None
    cycles: int
    tau_pooled: float | None
    tau_per_question: float | None
    tau_uncut: float | None
    reach_by_depth: tuple[float, ...]  # [max accepted]: reach_d for d = 1 …
    reach_conditional: tuple[float, ...]  # [max accepted]
    accept_histogram: tuple[int, ...]  # [max accepted + 1]
    frac_max_new_tokens: float | None
    repetition_rate: float | None
    by_category: tuple[Group, ...]
    by_turn: tuple[Group, ...]  # names "0", "1", … (0-based turns)
    speedup: float | None
    speedup_decode: float | None
    speedup_per_prompt: float | None
    speedup_ci95: tuple[float, float] | None
    speedup_predicted: float | None
    equality: EqualityCounts | None  # only at T = 0
    lm_head_share: float | None
    lm_head_total_share: float | None
    parameters: int | None
    weights_sha256: str | None = None  # trained drafters: the weights file the run loaded
    training: DrafterTraining | None = None  # trained drafters: how (results from before: None)
    sample_metrics: Mapping[str, float | None] = field(default_factory=dict)  # metrics/sample_metrics.py

    @property
    def is_oracle(self) -> bool:
        return self.drafter == ORACLE

    def category(self, name: str) -> Group | None:
        return next((g for g in self.by_category if g.name == name), None)

    def turn(self, name: str) -> Group | None:
        return next((g for g in self.by_turn if g.name == name), None)


@dataclass(frozen=True)
class CycleSplit:
    """Mean per-cycle times of one method, from cycles.jsonl."""

    method: str
    cycles: int
    emitted: int
    draft_s: float  # mean drafting time per cycle
    score_s: float  # mean target scoring (forward over the tree)
    verify_s: float
    commit_s: float

    @property
    def total_s(self) -> float:
        return self.draft_s + self.score_s + self.verify_s + self.commit_s

    @property
    def per_token_s(self) -> float | None:
        """Cycle time per emitted token: Σ cycle time / Σ emitted."""
        return self.total_s * self.cycles / self.emitted if self.emitted else None


@dataclass(frozen=True)
class ReplayedTau:
    """One entry of replays.json (``coral-bench replay``): τ at T = 0 of a drafter setting along the
    run's vanilla output, untimed."""

    key: str  # LABEL@tree=SHAPE
    label: str
    drafter: str
    tree: str
    samples: int
    cycles: int
    tau_pooled: float | None
    question_taus: Mapping[str, float]  # question id → pooled τ over its turns (HASS convention)
    weights_sha256: str | None = None  # trained drafters (replays from before: None)
    training: DrafterTraining | None = None


@dataclass(frozen=True)
class Run:
    """One run directory, loaded. ``label`` ("A", "B", …) names it in tables and figures."""

    path: Path
    label: str
    schema_version: int
    config: Mapping[str, Any]
    provenance: Mapping[str, Any]
    baseline: MethodResult
    drafters: tuple[MethodResult, ...]
    peers: tuple[MethodResult, ...]
    vanilla_over_hf: float | None
    splits: tuple[CycleSplit, ...]  # () when cycles.jsonl is missing
    has_cycles: bool
    samples_lines: int | None  # complete lines of samples.jsonl; None when it is missing
    mean_prompt_tokens: float | None
    profile: Mapping[str, Any] | None
    question_taus: Mapping[str, Mapping[str, float]]  # method label → question id → pooled τ; {} without samples
    replays: tuple[ReplayedTau, ...] = ()  # replays.json, in file order; () without it

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def methods(self) -> tuple[MethodResult, ...]:
        return (self.baseline, *self.drafters, *self.peers)

    @property
    def temperature(self) -> float | None:
        sampling = self.config.get("sampling")
        return _opt_float(sampling.get("temperature", 0.0)) if isinstance(sampling, dict) else None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def split(self, method: str) -> CycleSplit | None:
        return next((s for s in self.splits if s.method == method), None)


def run_label(index: int) -> str:
    """A, B, …, Z, AA, AB, …"""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def load_run(path: Path, label: str = "A") -> Run:
    """Load a run directory; :class:`ReportError` with one line for anything that is not a finished run."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory (give a coral-bench run directory)")
    results_file = path / rd.RESULTS
    if not results_file.exists():
        if (path / rd.CONFIG).exists():
            raise ReportError(f"{path} holds an unfinished run (no {rd.RESULTS}): finish it with "
                              f"`coral-bench run --resume --out {path} …`")
        raise ReportError(f"{path} is not a coral-bench run directory (no {rd.RESULTS})")
    try:
        data = json.loads(results_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{results_file} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{results_file} is not a results object")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ReportError(f"{results_file} has no integer schema_version: not a coral-bench results file")
    if version > SUPPORTED_SCHEMA:
        raise ReportError(f"{results_file} has schema_version {version}, newer than this coral-bench reads "
                          f"({SUPPORTED_SCHEMA}): upgrade coral-bench")
    for key in ("config", "provenance", "baseline"):
        if not isinstance(data.get(key), dict):
            raise ReportError(f"{results_file} lacks the {key!r} section")
    config = data["config"]
    names = {d.get("label"): d.get("name") for d in config.get("drafters", []) if isinstance(d, dict)}
    where = str(results_file)
    baseline = _method(data["baseline"], "vanilla", "baseline", None, where)
    drafters = tuple(_method(v, k, "drafter", names.get(k, k), where) for k, v in _section(data, "drafters", where))
    peers = tuple(_method(v, k, "peer", None, where) for k, v in _section(data, "peers", where))
    samples_lines, prompt_mean, taus = _read_samples(path)
    has_cycles = (path / rd.CYCLES).exists()
    profile = data.get("profile")
    return Run(path=path, label=label, schema_version=version, config=config, provenance=data["provenance"],
               baseline=baseline, drafters=drafters, peers=peers,
               vanilla_over_hf=_opt_float(data["baseline"].get("vanilla_over_hf_vanilla")),
               splits=_read_cycles(path) if has_cycles else (), has_cycles=has_cycles,
               samples_lines=samples_lines, mean_prompt_tokens=prompt_mean,
               profile=profile if isinstance(profile, dict) else None, question_taus=taus,
               replays=_read_replays(path))


def load_runs(paths: list[Path]) -> tuple[Run, ...]:
    if not paths:
        raise ReportError("give at least one run directory")
    return tuple(load_run(Path(p), run_label(i)) for i, p in enumerate(paths))


def _section(data: dict, key: str, where: str) -> list[tuple[str, dict]]:
    section = data.get(key, {})
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise ReportError(f"{where}: {key!r} is not an object of method records")
    return list(section.items())


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _groups(value: Any) -> tuple[Group, ...]:
    if not isinstance(value, dict):
        return ()
    return tuple(Group(str(k), _opt_int(v.get("samples")) or 0, _opt_float(v.get("tau_pooled")),
                       _opt_float(v.get("tokens_per_s"))) for k, v in value.items() if isinstance(v, dict))


def _method(rec: dict, label: str, kind: str, drafter: str | None, where: str) -> MethodResult:
    missing = [k for k in ("samples", "new_tokens", "wall_s", "tokens_per_s") if k not in rec]
    if missing:
        raise ReportError(f"{where}: the record of {label!r} lacks {', '.join(missing)}")
    try:
        return _method_fields(rec, label, kind, drafter)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ReportError(f"{where}: the record of {label!r} has a malformed field ({exc})") from None


def _method_fields(rec: dict, label: str, kind: str, drafter: str | None) -> MethodResult:
    ci = rec.get("speedup_ci95")
    ci95 = (float(ci[0]), float(ci[1])) if isinstance(ci, list) and len(ci) == 2 and None not in ci else None
    return MethodResult(
        label=label, kind=kind, drafter=drafter, tree=rec.get("tree"),
        samples=int(rec["samples"]), questions=_opt_int(rec.get("questions")) or 0, new_tokens=int(rec["new_tokens"]),
        wall_s=float(rec["wall_s"]), prefill_s=_opt_float(rec.get("prefill_s")),
        tokens_per_s=_opt_float(rec["tokens_per_s"]), cycles=_opt_int(rec.get("cycles")) or 0,
        tau_pooled=_opt_float(rec.get("tau_pooled")), tau_per_question=_opt_float(rec.get("tau_per_question")),
        tau_uncut=_opt_float(rec.get("tau_uncut")),
        reach_by_depth=tuple(float(x) for x in rec.get("reach_by_depth") or ()),
        reach_conditional=tuple(float(x) for x in rec.get("reach_conditional") or ()),
        accept_histogram=tuple(int(x) for x in rec.get("accept_histogram") or ()),
        frac_max_new_tokens=_opt_float(rec.get("frac_max_new_tokens")),
        repetition_rate=_opt_float(rec.get("repetition_rate")),
        by_category=_groups(rec.get("by_category")), by_turn=_groups(rec.get("by_turn")),
        speedup=1.0 if kind == "baseline" else _opt_float(rec.get("speedup")),
        speedup_decode=_opt_float(rec.get("speedup_decode")),
        speedup_per_prompt=_opt_float(rec.get("speedup_per_prompt")),
        speedup_ci95=ci95, speedup_predicted=_opt_float(rec.get("speedup_predicted")),
        equality=EqualityCounts.from_record(rec),
        lm_head_share=_opt_float(rec.get("lm_head_share")),
        lm_head_total_share=_opt_float(rec.get("lm_head_total_share")),
        parameters=_opt_int(rec.get("parameters")),
        weights_sha256=_weights_hash(rec.get("weights")),
        training=_training(rec.get("weights")),
        sample_metrics={str(k): _opt_float(v) for k, v in (rec.get("sample_metrics") or {}).items()},
    )


def _training(weights: Any) -> DrafterTraining | None:
    t = weights.get("trained") if isinstance(weights, dict) else None
    if not isinstance(t, dict) or "epochs" not in t:  # results from before recorded only method and git hash
        return None
    router = t.get("router") if isinstance(t.get("router"), dict) else {}
    loss = t.get("loss") if isinstance(t.get("loss"), dict) else {}
    return DrafterTraining(
        method=str(t.get("method", "?")), steps=_opt_int(t.get("steps")), epochs=_opt_float(t.get("epochs")),
        optimizer_steps=_opt_int(t.get("optimizer_steps")), tokens=_opt_int(t.get("tokens")),
        wall_time_s=_opt_float(t.get("wall_time_s")), complete=bool(t.get("complete", True)),
        heldout_top1=tuple(float(a) for a in t.get("heldout_top1") or ()), loss=tuple(sorted(loss.items())),
        history=t.get("history"), router_steps=_opt_int(router.get("optimizer_steps")),
        router_wall_time_s=_opt_float(router.get("wall_time_s")))


def _weights_hash(weights: Any) -> str | None:
    digest = weights.get("weights_sha256") if isinstance(weights, dict) else None
    return digest if isinstance(digest, str) else None


def _read_replays(path: Path) -> tuple[ReplayedTau, ...]:
    file = path / rd.REPLAYS
    if not file.exists():
        return ()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        out = []
        for key, entry in data.items():
            emitted: dict[str, int] = defaultdict(int)
            cycles: dict[str, int] = defaultdict(int)
            for sample in entry["samples"]:
                emitted[str(sample["question_id"])] += sum(sample["emitted"])
                cycles[str(sample["question_id"])] += len(sample["emitted"])
            out.append(ReplayedTau(key=key, label=str(entry["label"]), drafter=str(entry["drafter"]),
                                   tree=str(entry["tree"]), samples=len(entry["samples"]),
                                   cycles=int(entry["cycles"]), tau_pooled=_opt_float(entry.get("tau_pooled")),
                                   question_taus={q: emitted[q] / cycles[q] for q in emitted if cycles[q]},
                                   weights_sha256=_weights_hash((entry.get("provenance") or {}).get("weights")),
                                   training=_training((entry.get("provenance") or {}).get("weights"))))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"{file} is not a coral-bench replays file ({type(exc).__name__}: {exc})") from None
    return tuple(out)


def _read_samples(path: Path) -> tuple[int | None, float | None, dict[str, dict[str, float]]]:
    """Complete lines of samples.jsonl, their mean prompt length and each method's per-question τ
    (:func:`stats.question_taus`, keyed by method label); an unfinished last line is ignored."""
    file = path / rd.SAMPLES
    if not file.exists():
        return None, None, {}
    raw = file.read_bytes()
    lines = [line for line in raw[: raw.rfind(b"\n") + 1].splitlines() if line.strip()]
    by_method: dict[str, list[SampleRecord]] = defaultdict(list)
    prompts = []
    for number, line in enumerate(lines, start=1):
        try:
            record = SampleRecord.from_json(json.loads(line))
            prompts.append(int(record.prompt_tokens))
            by_method[record.method].append(record)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ReportError(f"{file}:{number}: corrupt sample line") from None
    try:
        taus = {method: question_taus(samples) for method, samples in by_method.items()}
    except (ValueError, TypeError) as exc:
        raise ReportError(f"{file}: malformed sample records ({exc})") from None
    return len(lines), (math.fsum(prompts) / len(prompts) if prompts else None), taus


_TIMES = ("draft_s", "score_s", "verify_s", "commit_s")


def _read_cycles(path: Path) -> tuple[CycleSplit, ...]:
    """Per-method means of the cycle times, in the order methods first appear."""
    file = path / rd.CYCLES
    sums: dict[str, list] = {}  # method -> [cycles, emitted, [times…]]
    raw = file.read_bytes()
    for number, line in enumerate(raw[: raw.rfind(b"\n") + 1].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            entry = sums.setdefault(str(row["method"]), [0, 0, [[] for _ in _TIMES]])
            entry[0] += 1
            entry[1] += int(row["emitted"])
            for acc, key in zip(entry[2], _TIMES):
                acc.append(float(row[key]))
        except (ValueError, KeyError, TypeError):
            raise ReportError(f"{file}:{number}: corrupt cycle line") from None
    return tuple(CycleSplit(method, n, emitted, *(math.fsum(t) / n for t in times))
                 for method, (n, emitted, times) in sums.items())
