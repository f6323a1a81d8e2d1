"""Replay: exact τ at T = 0 of any drafter and tree from a recorded run, running only the drafter.

At T = 0 the speculative output equals vanilla's (lossless), so each cycle is decided by vanilla's
recorded greedy tokens: one teacher-forced target forward over prompt + vanilla output gives the
target features f_q at every position (and its greedy token after each, to check the record); then
cycles are simulated through the ``Drafter`` protocol: the drafter proposes a tree from the current
root, accepted = the longest tree path whose tokens match the recorded greedy tokens, the bonus is
the next recorded token, the drafter commits the features of the accepted positions, and so on
(docs/methods.md §7 "Replay"). Cycles, accepted and emitted counts equal those of a real run with the same
setting (a test checks it on a float64 model). Past the recorded output (a last cycle whose tree
matches to the end) the target's own greedy tokens are computed on demand.

At T > 0 no single path is known, so each cycle scores its tree with the target (untimed) and uses
E[accepted] (``verify.expected_accepted``, docs/methods.md §4) while following vanilla's recorded output.

Prompts are re-rendered from the suite with vanilla's earlier-turn answers, as the runner (``run/runner.py``) does for vanilla.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from coral_bench.rundir import layout as rd
from coral_bench.run.chat import answer_text, turn_prompt
from coral_bench.core.drafter import DraftContext, Drafter, DrafterSettings
from coral_bench.drafters.eagle import EagleInfo
from coral_bench.drafters.registry import DRAFTERS, build_drafter, tree_for
from coral_bench.run.targets import LoadedTarget, load_target
from coral_bench.run.provenance import git_hash
from coral_bench.core.records import SampleRecord
from coral_bench.core.reference import GreedyReference
from coral_bench.core.sampling import SamplingConfig
from coral_bench.costmodel.speedup import SampleShape, shape_cycles
from coral_bench.rundir.layout import VANILLA
from coral_bench.rundir.recorded import RecordedConfig, drafter_results, read_config
from coral_bench.run.suites import Suite, SuiteError, limit, load_suite
from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, TreeShape, Verdict
from coral_bench.core.verify import expected_accepted

REPLAYS = rd.REPLAYS


class ReplayError(ValueError):
    """A run that cannot be replayed as asked (no vanilla samples, prompts that no longer render the same…)."""


@dataclass(frozen=True)
class ReplayCycle:
    nodes: int  # tree size, root included
    accepted: int  # draft tokens matching the recorded tokens
    emitted: int  # after the cut at the recorded output's end
    expected_accepted: float | None = None  # T > 0: closed-form E[accepted] of the tree
    head_union: tuple[int, ...] = ()  # |∪ selected router groups| per drafter forward (routed heads)


@dataclass(frozen=True)
class ReplaySample:
    question_id: str
    turn: int
    prompt_tokens: int
    new_tokens: int
    cycles: tuple[ReplayCycle, ...]
    mismatches: int  # recorded tokens that differ from the teacher-forced greedy token (bf16 near-ties)

    def shape(self, expected: bool) -> SampleShape:
        """Model input (speedup.SampleShape); ``expected``: use E[accepted] (T > 0) as the accepted count."""
        acc = [c.expected_accepted if expected else c.accepted for c in self.cycles]
        emitted = [a + 1 for a in acc] if expected else [c.emitted for c in self.cycles]
        return SampleShape(self.question_id, self.turn, self.prompt_tokens, self.new_tokens,
                           shape_cycles(self.prompt_tokens, [c.nodes for c in self.cycles], acc, emitted,
                                        [c.head_union for c in self.cycles]))


@dataclass(frozen=True)
class ReplayResult:
    label: str
    drafter: str
    tree: TreeShape
    temperature: float
    samples: tuple[ReplaySample, ...]
    # the drafter's weights (EagleInfo.record(): checkpoint, sha256, how trained), git hash, date,
    # threads and command of this replay: a replay may come long after the run it extends
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        return sum(len(s.cycles) for s in self.samples)

    @property
    def tau_pooled(self) -> float | None:
        """Σ emitted / Σ cycles (docs/methods.md §1); at T > 0 along vanilla's output, see ``tau_expected``."""
        n = self.cycles
        return sum(c.emitted for s in self.samples for c in s.cycles) / n if n else None

    @property
    def tau_expected(self) -> float | None:
        """1 + mean E[accepted] per cycle (T > 0 only)."""
        values = [c.expected_accepted for s in self.samples for c in s.cycles]
        if not values or any(v is None for v in values):
            return None
        return 1.0 + sum(values) / len(values)

    def shapes(self) -> list[SampleShape]:
        return [s.shape(self.temperature > 0) for s in self.samples]

    def to_json(self) -> dict:
        return {"label": self.label, "drafter": self.drafter, "tree": self.tree.describe(),
                "temperature": self.temperature, "cycles": self.cycles, "tau_pooled": self.tau_pooled,
                "tau_expected": self.tau_expected, "mismatches": sum(s.mismatches for s in self.samples),
                "samples": [{"question_id": s.question_id, "turn": s.turn, "prompt_tokens": s.prompt_tokens,
                             "new_tokens": s.new_tokens, "mismatches": s.mismatches,
                             "nodes": [c.nodes for c in s.cycles], "accepted": [c.accepted for c in s.cycles],
                             "emitted": [c.emitted for c in s.cycles],
                             "expected_accepted": [c.expected_accepted for c in s.cycles],
                             "head_union": [list(c.head_union) for c in s.cycles]} for s in self.samples],
                **({"provenance": dict(self.provenance)} if self.provenance else {})}


# ---------------------------------------------------------------------------------------------
# one sample


class _Truth:
    """x_q for every position q: the sequence given, then the target's own greedy tokens on demand
    (continuing the target's cache, which holds the sequence after the teacher-forced prefill)."""

    def __init__(self, target: Target, seq: list[int], next_token: int):
        self._target = target
        self._seq = list(seq) + [next_token]

    def token(self, q: int) -> int:
        while q >= len(self._seq):
            scored = self._target.score(DraftTree.root_only(self._seq[-1]))
            self._target.commit((0,))
            self._seq.append(int(scored.logits[0].argmax()))
        return self._seq[q]


def _greedy_rows(target: Target, features: torch.Tensor, chunk: int = 256) -> list[int]:  # [S, H] -> [S]
    """The target's greedy token after each position, a chunk of rows at a time (logits are [rows, V])."""
    return [t for i in range(0, features.shape[0], chunk)
            for t in target.logits_from_features(features[i : i + chunk]).argmax(-1).tolist()]


def _match(tree: DraftTree, token_at: Callable[[int], int | None], root_pos: int) -> tuple[int, ...]:
    """The longest root path whose node at depth d equals the recorded token at root_pos + d."""
    node, path = 0, [0]
    while tree.children[node]:
        want = token_at(root_pos + len(path))
        child = next((c for c in tree.children[node] if tree.tokens[c] == want), None)
        if child is None:
            break
        node = child
        path.append(child)
    return tuple(path)


def _scored_at(features: torch.Tensor, tree: DraftTree, path: tuple[int, ...], root_pos: int) -> TargetOutput:
    """What ``Target.score`` would hand the drafter's commit: features per node, real ones on the path."""
    feats = features.new_zeros(tree.size, features.shape[1])
    feats[list(path)] = features[root_pos : root_pos + len(path)]
    return TargetOutput(logits=features.new_zeros(0), features=feats)


@torch.inference_mode()
def replay_greedy(target: Target, drafter: Drafter, prompt: list[int], output: Sequence[int],
                  reference: GreedyReference | None = None) -> tuple[tuple[ReplayCycle, ...], int]:
    """T = 0: cycles of ``drafter`` against the recorded greedy ``output`` of ``prompt``; and the count of
    recorded tokens that differ from the teacher-forced greedy tokens."""
    P, N = len(prompt), len(output)
    if N < 2:  # stopped at the prefill's token: no cycle, and the loop never starts the drafter
        return (), 0
    seq = list(prompt) + list(output)
    tf = target.prefill(torch.tensor(seq, dtype=torch.long))  # one teacher-forced forward
    feats = tf.features  # [P + N, H] f_0 … f_{P+N−1}
    best = _greedy_rows(target, feats)  # best[q] = greedy token after position q
    mismatches = sum(best[P - 1 + j] != output[j] for j in range(N))
    truth = _Truth(target, seq, best[-1])
    prefill = TargetOutput(target.logits_from_features(feats[P - 1 : P]), feats[:P])
    drafter.begin(DraftContext(tuple(prompt), output[0], prefill, reference))
    cycles, done, root, pos = [], 1, output[0], P
    while done < N:
        tree = drafter.propose(root)
        path = _match(tree, truth.token, pos)
        tokens = tuple(tree.tokens[i] for i in path[1:]) + (truth.token(pos + len(path)),)
        emitted = min(len(tokens), N - done)
        cycles.append(ReplayCycle(tree.size, len(path) - 1, emitted, None, tree.head_union))
        done += emitted
        if done >= N:
            break
        drafter.commit(Verdict(path, tokens), _scored_at(feats, tree, path, pos))
        root, pos = tokens[-1], pos + len(tokens)
    return tuple(cycles), mismatches


@torch.inference_mode()
def replay_sampled(target: Target, drafter: Drafter, prompt: list[int], output: Sequence[int],
                   sampling: SamplingConfig, reference: GreedyReference | None = None) -> tuple[ReplayCycle, ...]:
    """T > 0: along vanilla's recorded (sampled) ``output``, each cycle's tree is scored by the target
    (untimed) for its closed-form E[accepted]; the walk follows the longest path matching the record."""
    P, N = len(prompt), len(output)
    if N < 2:
        return ()
    seq = list(prompt) + list(output)
    drafter.begin(DraftContext(tuple(prompt), output[0], target.prefill(torch.tensor(prompt)), reference))
    cycles, done, root, pos = [], 1, output[0], P
    while done < N:
        tree = drafter.propose(root)
        scored = target.score(tree)
        expected = expected_accepted(tree, scored.logits, sampling)
        path = _match(tree, lambda q: seq[q] if q < len(seq) else None, pos)
        nxt = pos + len(path)
        bonus = seq[nxt] if nxt < len(seq) else int(scored.logits[path[-1]].argmax())
        tokens = tuple(tree.tokens[i] for i in path[1:]) + (bonus,)
        emitted = min(len(tokens), N - done)
        cycles.append(ReplayCycle(tree.size, len(path) - 1, emitted, expected, tree.head_union))
        done += emitted
        if done >= N:
            target.discard()
            break
        target.commit(path)
        drafter.commit(Verdict(path, tokens), scored)
        root, pos = tokens[-1], pos + len(tokens)
    return tuple(cycles)


# ---------------------------------------------------------------------------------------------
# a run directory


def recorded_suite(config: RecordedConfig) -> Suite:
    """The suite a run asked, with its ``--limit``: by name, else by the question file it recorded."""
    try:
        suite = load_suite(config.suite)
    except SuiteError:
        suite = load_suite(config.suite_source)
    return limit(suite, config.limit) if config.limit else suite


def vanilla_prompt(loaded: LoadedTarget, suite: Suite, question_id: str, turn: int,
                   vanilla: dict[tuple[str, int], SampleRecord]) -> list[int]:
    """The prompt vanilla answered: the question's turns with vanilla's own earlier answers
    (``chat.turn_prompt``, as the run rendered it)."""
    question = next(q for q in suite.questions if q.question_id == question_id)
    return turn_prompt(loaded.tokenizer, suite, question, turn, [answer_text(vanilla[(question_id, t)]) for t in range(turn)])


def resolve_tree(config: RecordedConfig, label: str, name: str, tree: TreeShape | None) -> TreeShape:
    """``tree`` if given, else the tree the run used for ``label``, else the drafter's default
    (:func:`~coral_bench.drafters.registry.tree_for`, with the run's recorded tree as the chosen one)."""
    if name not in DRAFTERS:
        raise ReplayError(f"unknown drafter {name!r}: choose from {', '.join(DRAFTERS)}")
    used = config.method_trees.get(label)
    return tree_for(name, tree, TreeShape.parse(used) if used else None)


def replay_run(run_dir: Path, label: str, name: str, checkpoint: str | None, tree: TreeShape | None = None,
               loaded: LoadedTarget | None = None,
               progress: Callable[[int, int], None] | None = None, threads: int | None = None,
               command: str | None = None) -> ReplayResult:
    """Replay drafter ``name`` (result key ``label``) over every vanilla sample of the run in ``run_dir``.

    ``threads`` overrides the run's torch thread count (replay measures no time, so it may share cores);
    ``command`` is recorded with the result."""
    config = read_config(run_dir)
    vanilla = {(s.question_id, s.turn): s for s in rd.read_samples(run_dir) if s.method == VANILLA}
    if not vanilla:
        raise ReplayError(f"{run_dir} holds no vanilla samples to replay against")
    threads = threads or config.threads
    if threads:
        torch.set_num_threads(int(threads))
    loaded = loaded or load_target(config.target, config.dtype, config.device)
    sampling = SamplingConfig(**config.sampling)
    shape = resolve_tree(config, label, name, tree)
    drafter = build_drafter(loaded.target, DrafterSettings(name, shape, checkpoint, sampling.seed))
    suite = recorded_suite(config)
    order = {q.question_id: i for i, q in enumerate(suite.questions)}
    keys = sorted((k for k in vanilla if k[0] in order), key=lambda k: (order[k[0]], k[1]))
    samples = []
    for i, key in enumerate(keys):
        samples.append(_replay_one(loaded, suite, vanilla, key, drafter, name, sampling))
        if progress:
            progress(i + 1, len(keys))
    info = getattr(drafter, "info", None)  # EAGLE-style drafters say where their weights came from
    provenance = {"weights": info.record() if isinstance(info, EagleInfo) else None, "git_hash": git_hash(),
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "threads": torch.get_num_threads(), "command": command}
    return ReplayResult(label, name, shape, sampling.temperature, tuple(samples), provenance)


def _replay_one(loaded: LoadedTarget, suite: Suite, vanilla: dict, key: tuple[str, int], drafter: Drafter,
                name: str, sampling: SamplingConfig) -> ReplaySample:
    rec = vanilla[key]
    prompt = vanilla_prompt(loaded, suite, key[0], key[1], vanilla)
    if len(prompt) != rec.prompt_tokens:
        raise ReplayError(f"question {key[0]!r} turn {key[1]}: the prompt renders to {len(prompt)} tokens, the run "
                          f"recorded {rec.prompt_tokens} (suite or chat template changed)")
    reference = None
    if DRAFTERS[name].needs_reference:
        reference = GreedyReference(loaded.target)
        reference.add(prompt, rec.output_ids)
    if sampling.is_greedy:
        cycles, mismatches = replay_greedy(loaded.target, drafter, prompt, rec.output_ids, reference)
    else:
        cycles, mismatches = replay_sampled(loaded.target, drafter, prompt, rec.output_ids, sampling, reference), 0
    return ReplaySample(key[0], key[1], rec.prompt_tokens, rec.new_tokens, cycles, mismatches)


def save_replay(run_dir: Path, result: ReplayResult) -> Path:
    """Adds (or replaces) the result in ``replays.json`` under ``LABEL@tree=SHAPE``."""
    path = run_dir / REPLAYS
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[f"{result.label}@tree={result.tree.describe()}"] = result.to_json()
    rd.write_json(path, data)
    return path


# ---------------------------------------------------------------------------------------------
# estimate-speedup: the run's own settings, and what-if trees through replay (docs/methods.md §7)


def what_if(run_dir: Path, label: str, name: str, checkpoint: str | None, tree: TreeShape, profile_body: dict,
            loaded: LoadedTarget) -> tuple[Any, ReplayResult]:
    """Predicted speedup of drafter ``label`` with another ``tree``: τ from replay, latency terms from the
    run's profile (target) plus a profile of the drafter's forwards and no-op loop at that tree."""
    from coral_bench.costmodel import profile as pf
    from coral_bench.core.event_clock import clock_for
    from coral_bench.costmodel.noop import NoopPlan
    from coral_bench.costmodel.speedup import Estimate, predict_against_vanilla

    result = replay_run(run_dir, label, name, checkpoint, tree, loaded)
    s = profile_body.get("settings", {})
    settings = pf.ProfileSettings(tuple(s.get("nodes", (1,))), tuple(s["contexts"]), tuple(s["prompts"]),
                                  int(s.get("repeats", 3)), int(s.get("noop_cycles", 300)), int(s.get("seed", 0)))
    plans = tuple(NoopPlan(x.prompt_tokens, x.new_tokens, tuple(c.accepted for c in x.cycles))
                  for x in result.samples if x.cycles)
    seed = read_config(run_dir).seed
    spec = pf.MethodSpec(label, name, checkpoint, tree, plans, seed)
    method = pf.profile_method(spec, loaded.target, settings, clock_for(loaded.target.device))
    if method.costs is None:
        raise ReplayError(method.reason or f"cannot profile {name}")
    pred = predict_against_vanilla(result.shapes(), rd.read_samples(run_dir), profile_body, method.costs)
    if pred is None:
        raise ReplayError(f"{run_dir / 'profile.json'} lacks the target or vanilla terms: rerun coral-bench profile")
    return Estimate(label, tree.describe(), pred, None, None, None, what_if=True), result


def estimate_run(run_dir: Path, trees: Sequence[TreeShape] = (), labels: Sequence[str] = (),
                 note: Callable[[str], None] = lambda _: None, drafters: Sequence[Any] = ()) -> list[Any]:
    """Estimates for every drafter of the run (or ``labels``), plus one per what-if ``tree`` and one per
    what-if drafter (``drafters``: ``DrafterSpec``s the run did not time, e.g. other router settings;
    τ from replay); runs the profile pass first when the run has no ``profile.json``; writes the
    predictions into results.json."""
    from coral_bench.costmodel import profile as pf
    from coral_bench.costmodel.speedup import estimate_method, write_predictions

    config = read_config(run_dir)
    timed = drafter_results(run_dir)
    for spec in drafters:  # before any work
        if spec.name not in DRAFTERS:
            raise ReplayError(f"unknown drafter {spec.name!r}: choose from {', '.join(DRAFTERS)}")
        if spec.label in timed:
            raise ReplayError(f"what-if drafter label {spec.label!r} is already a drafter of the run: give it "
                              "another LABEL= (LABEL=NAME:CKPT@…)")
    loaded = None
    body = pf.read_profile(run_dir)
    if body is None:
        note(f"{run_dir} has no {pf.PROFILE}: running the profile pass first")
        loaded = load_target(config.target, config.dtype, config.device)
        body = pf.profile_run(run_dir, loaded=loaded).to_json()
    results = json.loads((run_dir / rd.RESULTS).read_text())
    samples, rows = rd.read_samples(run_dir), rd.read_cycles(run_dir)
    specs = {d.label: d for d in config.drafters if not labels or d.label in labels}
    estimates = []
    for label, entry in results.get("drafters", {}).items():
        if label not in specs:
            continue
        nodes = resolve_tree(config, label, specs[label].name, None).max_nodes
        est = estimate_method(label, samples, rows, body, entry, nodes)
        if est is None:
            note(f"{label}: the profile has no cost terms for it (see profile.json)")
        else:
            estimates.append(est)
        name = specs[label].name
        if trees and not pf.is_modelled(name):
            note(f"{label}: no what-if for {name} (the profile pass does not model it)")
            continue
        for tree in trees:
            if tree.max_nodes > max(body["settings"]["nodes"]):
                note(f"{label} @ {tree.describe()}: T_V extrapolated beyond the profiled n ≤ {max(body['settings']['nodes'])}")
            loaded = loaded or load_target(config.target, config.dtype, config.device)
            estimates.append(what_if(run_dir, label, specs[label].name, specs[label].checkpoint, tree,
                                     body, loaded)[0])
    for spec in drafters:
        if not pf.is_modelled(spec.name):
            note(f"{spec.label}: no what-if for {spec.name} (the profile pass does not model it)")
            continue
        tree = resolve_tree(config, spec.label, spec.name, spec.tree)
        loaded = loaded or load_target(config.target, config.dtype, config.device)
        estimates.append(what_if(run_dir, spec.label, spec.name, spec.checkpoint, tree, body, loaded)[0])
    rd.write_json(run_dir / rd.RESULTS, write_predictions(results, estimates, drafters))
    return estimates
