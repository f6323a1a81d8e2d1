"""Replay gives the τ of a real T = 0 run exactly; E[accepted] matches the sampler; the CLI end to end."""

import json

import pytest
import torch
from click.testing import CliRunner

from coral_bench.run.chat import render
from coral_bench.cli import main
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.drafters.eagle import EagleDrafter, EagleInfo
from coral_bench.drafters.eagle_model import EagleConfig, EagleModel
from coral_bench.drafters.registry import build_drafter
from coral_bench.core.reference import GreedyReference
from coral_bench.costmodel.replay import replay_greedy, replay_sampled
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model
from coral_bench.core.tree import DraftTree, TreeShape
from coral_bench.core.verify import expected_accepted, rejection

GREEDY = SamplingConfig()
PROMPTS = ["Tell me a story about a cat.", "abc abc abc abc"]


@pytest.fixture(scope="module")
def mimic():
    """A 1-layer float64 target and an EAGLE drafter that nearly reproduces it: unit-RMS embeddings and
    unit norms make the target's input norm the identity and its final norm a positive scale (same argmax),
    and the drafter's layer is the target's layer. A little of the feature goes into fc, so the drafts
    depend on the features the replay commits, and acceptance varies from cycle to cycle."""
    model = tiny_model(seed=0, dtype=torch.float64, num_hidden_layers=1, rms_norm_eps=0.0)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb /= emb.pow(2).mean(-1, keepdim=True).sqrt()
    target = Target(model, (2,))
    cfg = EagleConfig.from_dict(model.config.to_dict(), vocab_size=target.vocab_size, max_position_embeddings=2048)
    net = EagleModel(cfg).double()
    h = cfg.hidden_size
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.weight[:, :h] = torch.eye(h, dtype=torch.float64)
        noise = torch.randn(h, h, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        net.fc.weight[:, h:] = 0.08 * noise / h**0.5
        net.fc.bias.zero_()
        layer = {k: v for k, v in model.model.layers[0].state_dict().items() if "input_layernorm" not in k}
        net.layers[0].load_state_dict(layer)
    return target, net, cfg


class Recording:
    """A drafter wrapper that keeps every proposed tree (same proposals ⇒ same features were committed)."""

    def __init__(self, inner):
        self.inner, self.trees, self.settings = inner, [], inner.settings

    def begin(self, context):
        self.inner.begin(context)

    def propose(self, root):
        self.trees.append(self.inner.propose(root))
        return self.trees[-1]

    def commit(self, verdict, scored):
        self.inner.commit(verdict, scored)

    def parameter_count(self):
        return 0


def _vanilla(target, prompt, clock, max_new=60):
    drafter = build_drafter(target, DrafterSettings("vanilla", TreeShape("chain", 1)))
    return generate(target, drafter, prompt, max_new, GREEDY, generator_for(0), clock, reserve=20)


@pytest.mark.parametrize("tree", ["top_k=3,depth=2,total_tokens=8", "chain:3"])
@pytest.mark.parametrize("text", PROMPTS)
def test_replay_equals_a_real_run_for_an_eagle_drafter(mimic, tokenizer, clock, tree, text):
    target, net, cfg = mimic
    settings = DrafterSettings("eagle", TreeShape.parse(tree))
    make = lambda: Recording(EagleDrafter(target, net, settings, EagleInfo(None, "target", cfg)))  # noqa: E731
    prompt = render(tokenizer, [text], [], None)
    van = _vanilla(target, prompt, clock)
    real_drafter, replay_drafter = make(), make()
    real = generate(target, real_drafter, prompt, 60, GREEDY, generator_for(0), clock, reserve=20)
    cycles, mismatches = replay_greedy(target, replay_drafter, prompt, van.ids)
    assert real.ids == van.ids and mismatches == 0
    assert [c.accepted for c in cycles] == [c.accepted for c in real.cycles]
    assert [c.emitted for c in cycles] == [c.emitted for c in real.cycles]
    assert [c.nodes for c in cycles] == [c.nodes for c in real.cycles]
    assert [t.tokens for t in replay_drafter.trees] == [t.tokens for t in real_drafter.trees]
    assert len({c.accepted for c in cycles}) > 1  # the fixture exercises several acceptance lengths
    tau = sum(c.emitted for c in cycles) / len(cycles)
    assert tau == (len(real.ids) - 1) / len(real.cycles)


@pytest.mark.parametrize("name,tree", [("noisy-oracle", "top_k=3,depth=2,total_tokens=8"), ("oracle", "chain:4"),
                                       ("prompt-lookup", "chain:4"), ("eagle", "top_k=3,depth=2,total_tokens=8")])
def test_replay_equals_a_real_run_for_registered_drafters(target64, tokenizer, clock, name, tree):
    """Branching commits, bonus tokens at leaves, a last cycle matching past the recorded output (oracle)."""
    settings = DrafterSettings(name, TreeShape.parse(tree), None, 0)
    for text in PROMPTS:
        prompt = render(tokenizer, [text], [], None)
        van = _vanilla(target64, prompt, clock)
        refs = [GreedyReference(target64) for _ in range(2)]
        for ref in refs:
            ref.add(prompt, van.ids)
        real = generate(target64, build_drafter(target64, settings), prompt, 60, GREEDY, generator_for(0), clock,
                        reserve=20, reference=refs[0])
        cycles, _ = replay_greedy(target64, build_drafter(target64, settings), prompt, van.ids, refs[1])
        assert [c.accepted for c in cycles] == [c.accepted for c in real.cycles]
        assert [c.emitted for c in cycles] == [c.emitted for c in real.cycles]


def test_replay_at_a_vanishing_temperature_is_the_greedy_count(mimic, tokenizer, clock):
    """The T > 0 path (a target forward per cycle, closed-form E[accepted]) meets the T = 0 path as T → 0."""
    target, net, cfg = mimic
    settings = DrafterSettings("eagle", TreeShape.parse("top_k=3,depth=2,total_tokens=8"))
    prompt = render(tokenizer, [PROMPTS[0]], [], None)
    van = _vanilla(target, prompt, clock, max_new=40)
    greedy, _ = replay_greedy(target, EagleDrafter(target, net, settings, EagleInfo(None, "target", cfg)),
                              prompt, van.ids)
    cold = replay_sampled(target, EagleDrafter(target, net, settings, EagleInfo(None, "target", cfg)), prompt,
                          van.ids, SamplingConfig(temperature=1e-4))
    assert [c.accepted for c in cold] == [c.accepted for c in greedy]
    assert [c.expected_accepted for c in cold] == pytest.approx([c.accepted for c in greedy], abs=1e-6)


def test_closed_form_expected_accepted_matches_monte_carlo():
    """E[accepted] (verify.expected_accepted) against the rejection sampler it describes (docs/methods.md §4)."""
    gen = torch.Generator().manual_seed(0)
    tree = DraftTree(tokens=(0, 1, 2, 3, 1, 2, 4), parents=(-1, 0, 0, 0, 1, 1, 4))
    logits = torch.randn(tree.size, 6, generator=gen, dtype=torch.float64) * 1.5
    cfg = SamplingConfig(temperature=0.8)
    runs = 4000
    draws = torch.tensor([rejection(tree, logits, cfg, gen).accepted for _ in range(runs)], dtype=torch.float64)
    se = float(draws.std()) / runs**0.5
    assert abs(float(draws.mean()) - expected_accepted(tree, logits, cfg)) < 5 * se


# ---- the CLI end to end on a tiny run --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(main, ["run", "--suite", "mtbench", "--target", "tiny-random", "--dtype", "float64",
                                       "--threads", "1", "--limit", "1", "--max-new-tokens", "16",
                                       "--drafter", "eagle@tree=top_k=3,depth=2,total_tokens=8",
                                       "--drafter", "prompt-lookup", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_profile_estimate_and_replay(tiny_run):
    result = _invoke("profile", "--run", str(tiny_run), "--nodes", "1-3,8", "--repeats", "1", "--noop-cycles", "20")
    assert result.exit_code == 0, result.output
    profile = json.loads((tiny_run / "profile.json").read_text())
    assert {p["nodes"] for p in profile["t_v"]} == {1, 2, 3, 8}
    assert set(profile["methods"]) == {"vanilla", "eagle", "prompt-lookup"}
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["profile"]["t_v"] == profile["t_v"]
    assert 0 < results["drafters"]["eagle"]["lm_head_share"] < results["drafters"]["eagle"]["lm_head_total_share"]

    result = _invoke("estimate-speedup", str(tiny_run), "--what-if", "tree=chain:2")
    assert result.exit_code == 0, result.output
    assert "Leviathan" in result.output and "what-if" in result.output
    results = json.loads((tiny_run / "results.json").read_text())
    for label in ("eagle", "prompt-lookup"):
        entry = results["drafters"][label]
        assert entry["speedup_predicted"] > 0 and entry["speedup_decode_predicted"] > 0
        assert entry["speedup_model"]["tau"] == pytest.approx(entry["tau_pooled"])  # τ from the run
        assert [w["tree"] for w in entry["what_if"]] == ["chain:2"]

    result = _invoke("replay", str(tiny_run), "--drafter", "eagle")
    assert result.exit_code == 0, result.output
    replays = json.loads((tiny_run / "replays.json").read_text())
    replayed = replays["eagle@tree=top_k=3,depth=2,total_tokens=8"]
    assert replayed["tau_pooled"] == pytest.approx(results["drafters"]["eagle"]["tau_pooled"])
    assert replayed["cycles"] == results["drafters"]["eagle"]["cycles"]
    # a replay says which weights it ran and when, like the run's own record of them
    assert replayed["provenance"]["weights"] == results["drafters"]["eagle"]["weights"]
    assert replayed["provenance"]["command"].startswith("coral-bench") and replayed["provenance"]["date"]


def test_cli_estimate_runs_the_profile_pass_when_missing(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "profile.json").unlink(missing_ok=True)
    result = _invoke("estimate-speedup", str(run), "--drafter", "prompt-lookup")
    assert result.exit_code == 0, result.output
    assert (run / "profile.json").exists()
    assert json.loads((run / "results.json").read_text())["drafters"]["prompt-lookup"]["speedup_predicted"] > 0


def test_cli_bad_input_is_one_line(tiny_run):
    assert _invoke("replay", str(tiny_run), "--drafter", "nope").exit_code == 2
    assert _invoke("estimate-speedup", str(tiny_run), "--what-if", "chain:2").exit_code == 2


def test_cli_what_if_a_drafter_the_run_did_not_time(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    result = _invoke("estimate-speedup", str(run), "--drafter", "prompt-lookup",
                     "--what-if", "drafter=pl2=prompt-lookup@tree=chain:2")
    assert result.exit_code == 0, result.output
    entry = json.loads((run / "results.json").read_text())["what_if_drafters"]["pl2"]
    assert entry["name"] == "prompt-lookup" and entry["tree"] == "chain:2" and entry["tau_source"] == "replay"
    assert entry["speedup_predicted"] > 0 and entry["speedup_decode_predicted"] > 0
    assert _invoke("replay", str(run), "--drafter", "pl2=prompt-lookup@tree=chain:2").exit_code == 0
    replayed = json.loads((run / "replays.json").read_text())["pl2@tree=chain:2"]
    assert entry["tau"] == pytest.approx(replayed["tau_pooled"])
    clash = CliRunner().invoke(main, ["estimate-speedup", str(run), "--what-if", "drafter=prompt-lookup@tree=chain:2"])
    assert clash.exit_code == 2 and "already a drafter of the run" in clash.output
    assert _invoke("estimate-speedup", str(run), "--what-if", "drafter=nope").exit_code == 2
