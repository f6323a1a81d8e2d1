"""Runs a suite: vanilla, each drafter and each peer over the same prompts, interleaved per question.

Same process, same target object, same clock and stopping rule for every method (docs/design.md §7).
Every finished (method, question, turn) is appended to ``samples.jsonl`` at once, so an interrupted
run resumes where it stopped; ``results.json`` is rebuilt from the samples at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from coral_bench.rundir import layout as rd
from coral_bench.rundir.layout import VANILLA
from coral_bench.rundir.recorded import read_config
from coral_bench.run.chat import answer_text, turn_prompt
from coral_bench.core.clock import Clock, is_busy, load_average
from coral_bench.core.event_clock import clock_for
from coral_bench.run.accelerator import PeakMemory
from coral_bench.core.decode import Generation, generate
from coral_bench.core.drafter import Drafter, DrafterSettings
from coral_bench.drafters.eagle import EagleInfo
from coral_bench.drafters.registry import build_drafter, drafter_entry, tree_for
from coral_bench.run.judge import history_prompt, judge, noise_bounds
from coral_bench.run.noise import NoiseBound, NoiseShape
from coral_bench.run.targets import LoadedTarget, load_target
from coral_bench.run.specs import ChosenTree, DrafterSpec, MethodError, PeerSpec, check_unique
from coral_bench.run.peers import HF_VANILLA, PEERS, HfPeer, PeerError, PeerFailure, build_peer
from coral_bench.run.provenance import provenance, session_event
from coral_bench.core.reference import GreedyReference
from coral_bench.core.records import SampleRecord
from coral_bench.core.sampling import SamplingConfig
from coral_bench.metrics.stats import compare, summarize
from coral_bench.run.suites import Question, Suite, limit, load_suite, shard_of
from coral_bench.core.tree import TreeShape

class BusyMachineError(ValueError):
    """--require-idle on a busy machine (a refusal about the run's conditions, reported like bad input)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything ``coral-bench run`` was asked, resolved; written to config.json and results.json."""

    suite: str
    target: str = "smollm2-135m"
    drafters: tuple[DrafterSpec, ...] = ()
    peers: tuple[str, ...] = ()
    tree: TreeShape | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    sampling: SamplingConfig = SamplingConfig()
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    warmup_tokens: int = 16
    require_idle: bool = False
    # --tree auto: the chooser's settings as recorded; the trees come from run_suite's choose_trees
    tree_auto: Mapping[str, Any] | None = None
    shard: tuple[int, int] | None = None  # (I, N): every N-th question from the I-th (0-based); merge.py joins them

    def to_json(self) -> dict[str, Any]:
        """Every field, as ``from_json`` reads it back (config.json ``run_config``: what a merge re-runs)."""
        return {"suite": self.suite, "target": self.target,
                "drafters": [asdict(d) | {"tree": d.tree.describe() if d.tree else None} for d in self.drafters],
                "peers": list(self.peers), "tree": self.tree.describe() if self.tree else None, "limit": self.limit,
                "max_new_tokens": self.max_new_tokens, "sampling": asdict(self.sampling), "dtype": self.dtype,
                "device": self.device, "threads": self.threads, "warmup_tokens": self.warmup_tokens,
                "require_idle": self.require_idle, "tree_auto": dict(self.tree_auto) if self.tree_auto else None,
                "shard": list(self.shard) if self.shard else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunConfig":
        fields = dict(data)
        fields["drafters"] = tuple(DrafterSpec(d["label"], d["name"], d.get("checkpoint"),
                                               TreeShape.parse(d["tree"]) if d.get("tree") else None)
                                   for d in data["drafters"])
        fields["peers"] = tuple(data["peers"])
        fields["tree"] = TreeShape.parse(data["tree"]) if data.get("tree") else None
        fields["sampling"] = SamplingConfig(**data["sampling"])
        fields["shard"] = tuple(data["shard"]) if data.get("shard") else None
        return cls(**fields)


@dataclass(frozen=True)
class Method:
    label: str
    kind: str  # "baseline", "drafter" or "peer"
    run: Callable[[list[int], int, int, GreedyReference | None], Generation]  # (prompt, max_new, seed, reference)
    tree: TreeShape | None = None
    parameters: int = 0
    needs_reference: bool = False
    peer: HfPeer | None = None  # peers only: how transformers' generate is called
    weights: Mapping[str, Any] | None = None  # trained drafters: checkpoint, sha256, training method


# --tree auto: (loaded target, clock, suite) → the tree of each tunable drafter without its own @tree. The
# command line passes the cost model's chooser (costmodel/tree_search.py); the runner never imports it.
TreeChooser = Callable[[LoadedTarget, Clock, Suite], Mapping[str, ChosenTree]]


def run_suite(config: RunConfig, out: Path, resume: bool = False, command: str = "",
              progress: Callable[[int, int, str], None] | None = None,
              choose_trees: TreeChooser | None = None) -> dict:
    """Run (or resume) ``config`` into the run directory ``out``; returns the results dict.

    With ``config.tree_auto`` the trees come from ``choose_trees``, called once the target is loaded;
    a resumed run keeps the trees its config.json recorded."""
    suite = load_suite(config.suite)
    if config.limit is not None:
        suite = limit(suite, config.limit)
    whole = suite  # the noise bounds come from the whole suite's first prompts: every shard measures the same
    if config.shard is not None:
        suite = shard_of(suite, *config.shard)
    threads = config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    load_before = load_average()
    if config.require_idle and is_busy(load_before):
        raise BusyMachineError(f"machine is busy ({load_before:.2f} cores busy with other work); refusing to time (--require-idle)")
    peers = _peer_specs(config)  # unknown peers fail here, before a model is loaded
    check_unique([VANILLA, *(d.label for d in config.drafters), *(p.label for p in peers)])
    loaded = load_target(config.target, config.dtype, config.device)
    max_new = config.max_new_tokens or suite.max_new_tokens
    clock = clock_for(loaded.target.model.device)
    choices = _chosen_trees(config, loaded, clock, out, resume, suite, choose_trees)
    methods = _methods(config, loaded, clock, choices)
    config_json = _config_json(config, suite, loaded, max_new, threads, methods, command, choices)
    rd.create_run_dir(out, config_json, resume)
    finished = {r.key: r for r in rd.read_samples(out)}
    resumed = len(finished)
    rd.prune_cycles(out, set(finished))
    rd.append_session(out, session_event("start", load_before, command))
    # greedy equality is judged against noise bounds measured before any method runs (docs/methods.md §4)
    bounds = noise_bounds(_noise_shapes(methods), loaded, whole, out) if config.sampling.is_greedy else {}
    failures = _warm_up(methods, loaded, suite, max_new)  # peers that raise are dropped, with their error
    log = rd.SampleLog(out)
    memory = PeakMemory(loaded.target.device, out)
    total = len(methods) * sum(len(q.turns) for q in suite.questions)
    done = 0
    try:
        for question in suite.questions:  # methods interleaved per question (docs/design.md §7)
            for method in methods:
                answers: list[str] = []
                for turn in range(len(question.turns)):
                    key = (method.label, question.question_id, turn)
                    record = finished.get(key)
                    if record is None and method.label not in failures:
                        try:
                            with memory.measure(method.label):
                                record, gen = _run_turn(method, question, turn, answers, loaded, suite, max_new,
                                                        config.sampling, finished)
                        except Exception as exc:  # a failing peer is recorded and dropped; anything else is a bug
                            if method.kind != "peer":
                                raise
                            failures[method.label] = PeerFailure.from_exception(exc, question.question_id, turn)
                        else:
                            log.append(record, gen.cycles)
                            finished[key] = record
                    if record is not None:
                        answers.append(answer_text(record))
                    done += 1
                    if progress:
                        progress(done, total, method.label)
    finally:
        log.close()
        memory.save()
    sessions = rd.append_session(out, session_event("end", load_average(), command, len(finished) - resumed))
    provenance_json = provenance(loaded, threads, sessions, command)
    results = build_results(config_json, provenance_json, list(finished.values()), methods, loaded, suite,
                            config.sampling, failures, bounds, memory.of)
    rd.write_json(out / rd.RESULTS, results)
    return results


def _chosen_trees(config: RunConfig, loaded: LoadedTarget, clock: Clock, out: Path, resume: bool, suite: Suite,
                  choose_trees: TreeChooser | None) -> Mapping[str, ChosenTree]:
    if config.tree_auto is None:
        return {}
    if resume and (out / rd.CONFIG).exists():
        recorded = read_config(out).tree_auto_drafters
        return {label: ChosenTree.from_record(data) for label, data in recorded.items()}
    if choose_trees is None:
        raise ValueError("--tree auto needs a tree chooser (the command line passes the cost model's)")
    return choose_trees(loaded, clock, suite)


def _methods(config: RunConfig, loaded: LoadedTarget, clock: Clock,
             choices: Mapping[str, ChosenTree] | None = None) -> list[Method]:
    target = loaded.target
    choices = choices or {}
    methods = [_drafted(VANILLA, "baseline", DrafterSpec(VANILLA, VANILLA, None, None), config, target, clock)]
    for spec in config.drafters:
        if spec.name == VANILLA:
            raise MethodError("vanilla always runs as the baseline; do not pass it as --drafter")
        chosen = choices.get(spec.label)
        methods.append(_drafted(spec.label, "drafter", spec, config, target, clock, chosen.tree if chosen else None))
    for spec in _peer_specs(config):
        peer = build_peer(spec, target)
        methods.append(Method(spec.label, "peer", _peer_run(peer, target, config.sampling, clock), peer=peer))
    return methods


NO_PEERS = "none"  # --peer none: not even hf-vanilla (runs that only record vanilla's outputs, for replay)


def _peer_specs(config: RunConfig) -> list[PeerSpec]:
    """hf-vanilla (always run) and each ``--peer NAME[:ARG]``; ``--peer hf-vanilla`` changes nothing,
    ``--peer none`` (alone) runs no peer at all."""
    if NO_PEERS in config.peers:
        if len(config.peers) > 1:
            raise PeerError(f"--peer {NO_PEERS} runs no peer: it cannot be combined with other peers")
        return []
    specs = [PeerSpec.parse(text) for text in config.peers]
    for spec in specs:
        if spec.name not in PEERS:
            raise PeerError(f"unknown peer {spec.name!r}: choose from {', '.join(PEERS)}")
        if spec.name == HF_VANILLA and spec.arg is not None:
            raise PeerError(f"{HF_VANILLA} takes no argument (got {spec.arg!r})")
    return [PeerSpec.parse(HF_VANILLA), *(s for s in specs if s.name != HF_VANILLA)]


def _peer_run(peer: HfPeer, target, sampling: SamplingConfig, clock: Clock) -> Callable:
    def run(prompt: list[int], max_new: int, seed: int, reference: GreedyReference | None) -> Generation:
        return peer.run(target, prompt, max_new, sampling, seed, clock)

    return run


def _drafted(label: str, kind: str, spec: DrafterSpec, config: RunConfig, target, clock: Clock,
             chosen: TreeShape | None = None) -> Method:
    entry = drafter_entry(spec.name)
    tree = tree_for(spec.name, spec.tree, chosen, config.tree if kind == "drafter" else None)
    settings = DrafterSettings(name=spec.name, tree=tree, checkpoint=spec.checkpoint, seed=config.sampling.seed)
    drafter: Drafter = build_drafter(target, settings)

    def run(prompt: list[int], max_new: int, seed: int, reference: GreedyReference | None) -> Generation:
        # the generator lives where the tensors it samples live (a CPU one cannot sample CUDA tensors)
        generator = torch.Generator(device=target.device).manual_seed(seed)
        return generate(target, drafter, prompt, max_new, config.sampling, generator, clock,
                        reserve=settings.tree.max_nodes, reference=reference)

    info = getattr(drafter, "info", None)  # EAGLE-style drafters say where their weights came from
    return Method(label, kind, run, tree if kind != "baseline" else None, drafter.parameter_count(),
                  needs_reference=entry.needs_reference,
                  weights=info.record() if isinstance(info, EagleInfo) else None)


def _sample_seed(seed: int, key: tuple[str, str, int]) -> int:
    """Per-sample seed: a resumed run samples exactly what an uninterrupted one would."""
    digest = hashlib.sha256(f"{seed}|{key[0]}|{key[1]}|{key[2]}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _run_turn(method: Method, question: Question, turn: int, answers: list[str], loaded: LoadedTarget,
              suite: Suite, max_new: int, sampling: SamplingConfig, finished: dict):
    prompt = turn_prompt(loaded.tokenizer, suite, question, turn, answers)
    key = (method.label, question.question_id, turn)
    reference = _reference(prompt, question, turn, loaded, suite, finished) if method.needs_reference else None
    gen = method.run(prompt, max_new, _sample_seed(sampling.seed, key), reference)
    text = loaded.tokenizer.decode(list(gen.ids), skip_special_tokens=True)
    record = SampleRecord(method.label, question.question_id, turn, question.category, len(prompt), gen.ids, text,
                          len(gen.ids), gen.wall_s, gen.prefill_s, len(gen.cycles),
                          tuple(c.accepted for c in gen.cycles), gen.stop_reason,
                          tuple(c.expected_accepted for c in gen.cycles if c.expected_accepted is not None))
    return record, gen


def _reference(prompt: list[int], question: Question, turn: int, loaded: LoadedTarget, suite: Suite,
               finished: dict) -> GreedyReference:
    """Greedy continuations for oracle drafters, seeded with vanilla's output when its context is the same."""
    reference = GreedyReference(loaded.target)
    vanilla = finished.get((VANILLA, question.question_id, turn))
    if vanilla is not None and history_prompt(VANILLA, question, turn, loaded, suite, finished) == prompt:
        reference.add(prompt, vanilla.output_ids)
    return reference


def _warm_up(methods: list[Method], loaded: LoadedTarget, suite: Suite, max_new: int) -> dict[str, PeerFailure]:
    """Untimed: the first calls of a model pay for allocations and kernel selection. Returns the peers
    that raised (they are not run again); any other method raising is a bug and propagates."""
    question = suite.questions[0]
    prompt = turn_prompt(loaded.tokenizer, suite, question, 0, [])
    failures: dict[str, PeerFailure] = {}
    for method in methods:
        reference = GreedyReference(loaded.target) if method.needs_reference else None
        try:
            method.run(prompt, min(16, max_new), 0, reference)
        except Exception as exc:
            if method.kind != "peer":
                raise
            failures[method.label] = PeerFailure.from_exception(exc)
    return failures


def _noise_shapes(methods: list[Method]) -> dict[str, NoiseShape]:
    return {m.label: NoiseShape.of(m.tree) for m in methods if m.kind != "baseline"}


def build_results(config_json: dict, provenance_json: dict, samples: list[SampleRecord], methods: list[Method],
                  loaded: LoadedTarget, suite: Suite, sampling: SamplingConfig,
                  failures: Mapping[str, PeerFailure] | None = None,
                  bounds: Mapping[str, NoiseBound] | None = None,
                  peak_memory: Callable[[str], int | None] = lambda label: None) -> dict:
    failures, bounds = failures or {}, bounds or {}
    shapes = _noise_shapes(methods)
    baseline = next(m for m in methods if m.kind == "baseline")

    reruns: dict[tuple[int, ...], tuple[int, ...]] = {}  # methods that answered alike share the re-run

    def rerun_vanilla(prompt: list[int]) -> tuple[int, ...]:  # untimed: judging only
        if tuple(prompt) not in reruns:
            reruns[tuple(prompt)] = baseline.run(prompt, max_new, 0, None).ids
        return reruns[tuple(prompt)]

    by_method: dict[str, list[SampleRecord]] = {}
    for rec in samples:
        by_method.setdefault(rec.method, []).append(rec)
    keyed = {r.key: r for r in samples}
    max_new = config_json["max_new_tokens"]
    vanilla = by_method.get(VANILLA, [])
    results = {"schema_version": rd.SCHEMA_VERSION, "config": config_json, "provenance": provenance_json,
               "baseline": summarize(vanilla, max_new).to_json(), "drafters": {}, "peers": {}}
    if (peak := peak_memory(baseline.label)) is not None:
        results["baseline"]["peak_device_memory_bytes"] = peak
    for method in methods:
        if method.kind == "baseline":
            continue
        own = by_method.get(method.label, [])
        if method.label in failures:  # a failed peer: its error, no statistics over a partial set
            entry = failures[method.label].to_json() | {"samples_before_failure": len(own), "tokens_per_s": None}
            entry["generate_options"] = method.peer.options_json() if method.peer else None
            results["peers"][method.label] = entry
            continue
        entry = summarize(own, max_new).to_json()
        entry.update(compare(own, vanilla, seed=sampling.seed).to_json())
        if (peak := peak_memory(method.label)) is not None:
            entry["peak_device_memory_bytes"] = peak
        if sampling.is_greedy:
            bound = bounds.get(shapes[method.label].key)
            entry.update(judge(method.label, keyed, loaded, suite, bound, rerun_vanilla).to_json())
        if method.kind == "drafter":
            entry["tree"] = method.tree.describe() if method.tree else None
            entry["parameters"] = method.parameters
            entry["weights"] = dict(method.weights) if method.weights else None
            results["drafters"][method.label] = entry
        else:
            _acceptance_not_available(entry)
            entry["generate_options"] = method.peer.options_json() if method.peer else None
            results["peers"][method.label] = entry
    if "hf-vanilla" in results["peers"]:
        hf = results["peers"]["hf-vanilla"].get("tokens_per_s")
        results["baseline"]["vanilla_over_hf_vanilla"] = results["baseline"]["tokens_per_s"] / hf if hf else None
    return results


# Counts transformers' generate does not expose: reported as not available, never guessed.
_ACCEPTANCE_KEYS = ("cycles", "emitted_by_cycles", "cut_tokens", "tau_pooled", "tau_per_question", "tau_uncut",
                    "tau_expected", "reach_by_depth", "reach_conditional", "accept_histogram")


def _acceptance_not_available(entry: dict) -> None:
    for key in _ACCEPTANCE_KEYS:
        entry[key] = None
    for group in ("by_category", "by_turn"):
        for row in entry.get(group, {}).values():
            row["cycles"] = row["tau_pooled"] = None


def _config_json(config: RunConfig, suite: Suite, loaded: LoadedTarget, max_new: int, threads: int,
                 methods: list[Method], command: str, choices: Mapping[str, ChosenTree] | None = None) -> dict:
    return {
        "suite": suite.name,
        "suite_source": suite.source,
        "questions": len(suite.questions),
        "limit": config.limit,
        "target": loaded.name,
        "target_source": loaded.source,
        "dtype": loaded.dtype,
        "dtype_reason": loaded.dtype_reason,
        "device": loaded.device,
        "threads": threads,
        "max_new_tokens": max_new,
        "sampling": asdict(config.sampling),
        "warper_order": "temperature -> top_k -> top_p",
        "system_prompt": suite.system_prompt,
        "methods": {m.label: {"kind": m.kind, "tree": m.tree.describe() if m.tree else None} for m in methods},
        "drafters": [asdict(d) | {"tree": d.tree.describe() if d.tree else None} for d in config.drafters],
        "command": command,
        "shard": f"{config.shard[0]}/{config.shard[1]}" if config.shard else None,
        "run_config": config.to_json(),
        "tree_auto": None if config.tree_auto is None else {
            "settings": dict(config.tree_auto),
            "drafters": {label: dict(c.record) for label, c in (choices or {}).items()},
            "untuned": "vanilla takes no tree; prompt-lookup, oracles and early-exit keep their default trees; "
                       "a drafter's own @tree wins"},
    }
