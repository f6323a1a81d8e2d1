"""transformers' generate as peers: same greedy output as vanilla, clean errors, failures recorded not fatal."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers.generation.candidate_generator import AssistedCandidateGenerator

from coral_bench.run import peers as peers_module
from coral_bench.run.runner import RunConfig, run_suite
from coral_bench.run.chat import render
from coral_bench.cli import main
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.drafters.registry import build_drafter
from coral_bench.run.specs import DrafterSpec, PeerSpec
from coral_bench.run.peers import PEERS, HfPeer, PeerError, build_peer
from coral_bench.core.records import STOP_EOS, SampleRecord
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model
from coral_bench.core.tree import TreeShape

GREEDY = SamplingConfig()
PROMPTS = ["Tell me a story about a cat.", "What is 2 + 2? Explain step by step.", "abc abc abc abc"]
PEER_SPECS = ["hf-vanilla", "hf-prompt-lookup", "hf-prompt-lookup:2", "hf-early-exit", "hf-early-exit:2"]


def _vanilla(target, clock, ids, max_new):
    settings = DrafterSettings(name="vanilla", tree=TreeShape("chain", 1))
    return generate(target, build_drafter(target, settings), ids, max_new, GREEDY, generator_for(0), clock)


@pytest.mark.parametrize("spec", PEER_SPECS)
def test_greedy_peer_output_equals_vanilla(target64, clock, tokenizer, spec):
    peer = build_peer(PeerSpec.parse(spec), target64)
    for text in PROMPTS:
        ids = render(tokenizer, [text], [], None)
        van = _vanilla(target64, clock, ids, 40)
        gen = peer.run(target64, ids, 40, GREEDY, 0, clock)
        assert gen.ids == van.ids and gen.stop_reason == van.stop_reason
        assert gen.cycles == () and gen.prefill_s is None  # generate exposes neither


@pytest.mark.parametrize("spec", PEER_SPECS)
def test_peers_stop_at_eos_like_vanilla(clock, tokenizer, spec):
    model = tiny_model(seed=3, dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight[2] += 0.6 * model.lm_head.weight[65]  # EOS follows token-65-like features
    target = Target(model, (2,))
    peer = build_peer(PeerSpec.parse(spec), target)
    stopped = False
    for text in PROMPTS:
        ids = render(tokenizer, [text], [], None)
        van = _vanilla(target, clock, ids, 200)
        gen = peer.run(target, ids, 200, GREEDY, 0, clock)
        assert gen.ids == van.ids and gen.stop_reason == van.stop_reason
        stopped |= van.stop_reason == STOP_EOS
    assert stopped, "no prompt stopped on EOS: the fixture no longer exercises that case"


def test_peer_options(target64):
    assert build_peer(PeerSpec.parse("hf-prompt-lookup"), target64).options_json() == {
        "prompt_lookup_num_tokens": 4, "max_matching_ngram_size": 3}
    assert build_peer(PeerSpec.parse("hf-prompt-lookup:7"), target64).options_json()["prompt_lookup_num_tokens"] == 7
    early = build_peer(PeerSpec.parse("hf-early-exit"), target64).options_json()
    assert early["assistant_early_exit"] == 1  # a quarter of 2 layers, at least 1: as coral-bench's early-exit
    # What transformers 5.24 actually uses: the model's generation config over its defaults.
    assert early["num_assistant_tokens"] == 20 and early["assistant_confidence_threshold"] == 0.4
    assert build_peer(PeerSpec.parse("hf-vanilla"), target64).options_json() == {}
    assert set(PEERS) == {"hf-vanilla", "hf-prompt-lookup", "hf-early-exit"}


@pytest.mark.parametrize("spec,message", [
    ("hf-nope", "unknown peer"),
    ("hf-vanilla:3", "takes no argument"),
    ("hf-prompt-lookup:0", "N must be"),
    ("hf-prompt-lookup:x", "N must be"),
    ("hf-early-exit:3", "between 1 and the target's 2 layers"),
])
def test_bad_peers_are_refused(target64, spec, message):
    with pytest.raises(PeerError, match=message):
        build_peer(PeerSpec.parse(spec), target64)


def _raise_in_drafting(self, input_ids, **kwargs):
    raise RuntimeError("boom in the assistant\nsecond line")


def test_a_failing_early_exit_leaves_the_model_as_it_was(target64, clock, tokenizer, monkeypatch):
    """transformers lowers config.num_hidden_layers while drafting and does not restore it if drafting raises."""
    monkeypatch.setattr(AssistedCandidateGenerator, "get_candidates", _raise_in_drafting)
    ids = render(tokenizer, [PROMPTS[0]], [], None)
    peer = build_peer(PeerSpec.parse("hf-early-exit:1"), target64)
    with pytest.raises(RuntimeError, match="boom"):
        peer.run(target64, ids, 10, GREEDY, 0, clock)
    assert target64.model.config.num_hidden_layers == 2
    monkeypatch.undo()
    assert _vanilla(target64, clock, ids, 10).ids == build_peer(PeerSpec.parse("hf-vanilla"), target64).run(
        target64, ids, 10, GREEDY, 0, clock).ids


def _fail_from_call(monkeypatch, name: str, first_failing_call: int) -> None:
    """Make peer ``name`` raise from its n-th run on (1 = the warm-up)."""
    calls = {"n": 0}
    real = HfPeer.run

    def run(self, *args, **kwargs):
        if self.name == name:
            calls["n"] += 1
            if calls["n"] >= first_failing_call:
                raise RuntimeError("boom in generate\nwith a traceback-like second line")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(peers_module.HfPeer, "run", run)


@pytest.mark.parametrize("first_failing_call,failed_at", [
    (1, "warm-up"),
    (3, {"question_id": "81", "turn": 1}),  # warm-up, turn 0 succeed; turn 1 of the first question raises
])
def test_a_failing_peer_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, first_failing_call, failed_at):
    _fail_from_call(monkeypatch, "hf-early-exit", first_failing_call)
    config = RunConfig(suite="mtbench", target="tiny-random", dtype="float64", threads=1, limit=1, max_new_tokens=8,
                       drafters=(DrafterSpec.parse("early-exit"),), peers=("hf-prompt-lookup", "hf-early-exit:1"))
    results = run_suite(config, tmp_path / "run")
    assert results == json.loads((tmp_path / "run" / "results.json").read_text())
    failed = results["peers"]["hf-early-exit"]
    assert failed["error"] == "RuntimeError: boom in generate"
    assert failed["failed_at"] == failed_at
    assert failed["samples_before_failure"] == (1 if first_failing_call == 3 else 0)
    assert failed["generate_options"]["assistant_early_exit"] == 1
    assert failed["tokens_per_s"] is None and "speedup" not in failed  # no statistics over a partial set
    assert results["drafters"]["early-exit"]["equal_to_vanilla"] == 1.0
    for name in ("hf-vanilla", "hf-prompt-lookup"):
        row = results["peers"][name]
        assert row["equal_to_vanilla"] == 1.0 and row["tokens_per_s"] > 0
        assert row["tau_pooled"] is None and row["cycles"] is None and row["accept_histogram"] is None
    hf = results["peers"]["hf-vanilla"]["tokens_per_s"]
    assert results["baseline"]["vanilla_over_hf_vanilla"] == pytest.approx(results["baseline"]["tokens_per_s"] / hf)
    samples = [SampleRecord.from_json(json.loads(l)) for l in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    methods = [s.method for s in samples]
    assert {m: methods.count(m) for m in set(methods)} == {
        "vanilla": 2, "early-exit": 2, "hf-vanilla": 2, "hf-prompt-lookup": 2,
        **({"hf-early-exit": 1} if first_failing_call == 3 else {})}


def test_the_cli_reports_a_failing_peer_and_exits_normally(tmp_path, monkeypatch):
    _fail_from_call(monkeypatch, "hf-prompt-lookup", 1)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--suite", "mtbench", "--target", "tiny-random", "--dtype", "float64",
                                       "--threads", "1", "--limit", "1", "--max-new-tokens", "6",
                                       "--peer", "hf-prompt-lookup:3", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["peers"]["hf-prompt-lookup"]["error"].startswith("RuntimeError: boom")
    assert results["peers"]["hf-vanilla"]["equal_to_vanilla"] == 1.0


def test_unknown_peer_fails_before_loading_a_model(tmp_path):
    with pytest.raises(PeerError, match="unknown peer 'hf-nope'"):
        run_suite(RunConfig(suite="mtbench", target="/no/such/model", peers=("hf-nope:3",)), tmp_path / "run")
