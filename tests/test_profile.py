"""The profile pass: region accounting (fake clock), clean hooks, the no-op loop, real shapes without weights."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from coral_bench.costmodel import profile as pf
from coral_bench.costmodel import forwards as fw
from coral_bench.costmodel import noop
from coral_bench.cli import main
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.drafters.eagle_model import EagleModel, rope_inv_freq
from coral_bench.run.specs import DrafterSpec
from coral_bench.core.records import SampleRecord
from coral_bench.core.sampling import SamplingConfig
from coral_bench.costmodel.shapes import SHAPES, load_shape, profile_shapes, random_drafter
from coral_bench.costmodel.speedup import Curve, DrafterCosts, Grid, TargetCosts, costs_from_json, predict, sample_shapes
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_config, tiny_model
from coral_bench.core.tree import TreeShape

CPU = torch.device("cpu")
SMALL = pf.ProfileSettings(nodes=(1, 2, 3), contexts=(8, 24), prompts=(8, 16), repeats=1, noop_cycles=20)


class FakeClock:
    """Time moves only when a toy module says it worked."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class Work(nn.Module):
    def __init__(self, clock: FakeClock, cost: float):
        super().__init__()
        self.clock, self.cost = clock, cost

    def forward(self, x):
        self.clock.t += self.cost
        return x


def test_regions_and_other_add_up_to_the_forward_exactly_on_a_fake_clock():
    clock = FakeClock()
    parts = {"embedding": Work(clock, 1.0), "layer.0": Work(clock, 5.0), "layer.1": Work(clock, 7.0),
             "lm_head": Work(clock, 2.0)}
    runs = []
    with fw.RegionTimer(parts, clock) as timer:
        for _ in range(3):
            start = clock.now()
            x = parts["embedding"](0)
            clock.t += 0.5  # glue outside any region (masks, RoPE tables)
            for name in ("layer.0", "layer.1", "layer.0"):  # a module called twice in one forward adds up
                x = parts[name](x)
            parts["lm_head"](x)
            runs.append((clock.now() - start, timer.take()))
    prof = fw.median_repeat("target", "tree", 4, 10, runs)
    assert dict(prof.regions) == {"embedding": 1.0, "layer.0": 10.0, "layer.1": 7.0, "lm_head": 2.0, "other": 0.5}
    assert sum(v for _, v in prof.regions) == prof.total_s == 20.5
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in parts.values())


def test_hooks_detach_on_an_exception():
    clock = FakeClock()
    layer = Work(clock, 1.0)
    with pytest.raises(RuntimeError):
        with fw.RegionTimer({"layer": layer}, clock):
            raise RuntimeError("boom")
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_target_region_profile_leaves_the_model_as_it_was(clock):
    model = tiny_model(dtype=torch.float64)
    target = Target(model, (2,))
    ids = torch.arange(5, 30)
    before = target.prefill(ids)
    prof = fw.target_regions(target, 6, 16, clock, 2, torch.Generator().manual_seed(0))
    after = target.prefill(ids)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.features, after.features)
    assert _no_hooks(model)
    names = [n for n, _ in prof.regions]
    assert names == ["embedding", "layer.0", "layer.1", "norm", "lm_head", "other"]
    named = sum(v for n, v in prof.regions if n != "other")
    # Measured, so only structural: every region ran, none is counted twice (Σ named ≤ the forward, with
    # 0.1 ms of slack for the clock reads), and the regions with `other` sum to the forward's time exactly.
    assert all(v > 0 for n, v in prof.regions if n != "other")
    assert named <= prof.total_s + 1e-4
    assert sum(v for _, v in prof.regions) == pytest.approx(prof.total_s)


def test_discard_drops_the_scored_tree_so_t_v_is_measured_at_one_context(target64):
    target64.prefill(torch.arange(5, 25))
    tree = fw.profile_tree(6)
    first = target64.score(tree)
    target64.discard()
    assert target64.cache_len == 20
    again = target64.score(tree)
    target64.discard()
    assert torch.equal(first.logits, again.logits) and target64.cache_len == 20


def test_drafter_profile_leaves_no_hooks_and_shares_are_fractions(clock):
    target = Target(tiny_model(dtype=torch.float32), (2,))
    methods = pf.standalone_methods([DrafterSpec("eagle", "eagle", None, None)], None, SMALL, new_tokens=16)
    report = pf.profile_pass(target, "tiny", methods, SMALL, clock)
    assert _no_hooks(target.model)
    body = report.to_json()
    assert len(body["t_v"]) == len(SMALL.nodes) * len(SMALL.contexts)
    assert [p["prompt_tokens"] for p in body["t_pf"]] == list(SMALL.prompts)
    eagle = body["methods"]["eagle"]
    assert 0 < eagle["lm_head_share"] < eagle["lm_head_total_share"] < 1
    assert eagle["forward"]["widths"] == [4, 4, 4]  # the CPU default tree: top_k 4, depth 3
    assert {r["rows"] for r in eagle["regions"] if r["kind"] == "first"} == {1, 2, 3, 4, 5}  # L + 1 ≤ levels + 1
    assert body["methods"]["vanilla"]["forward"] is None and body["methods"]["vanilla"]["loop"]["cycles"] > 0
    assert costs_from_json(body, "eagle").forward.forwards == 4


@pytest.mark.parametrize("name,tree", [("eagle", "top_k=4,depth=3,total_tokens=16"), ("eagle", "chain:3"),
                                       ("vanilla", "chain:1")])
def test_noop_loop_reproduces_the_planned_acceptance(name, tree, clock):
    """The no-op target makes each cycle accept the planned L_c, so loop costs are measured at the run's mix."""
    shape = TreeShape.parse(tree)
    gen = torch.Generator().manual_seed(0)
    script = noop._Script((2,), 64)
    target = Target(noop._NoopLM(tiny_config(), torch.float32, CPU, script, shape.max_nodes + 1, gen), (2,))
    drafter = noop._noop_drafter(name, DrafterSettings(name, shape), (2,), CPU, gen, None)
    plan = [min(a, shape.levels if name != "vanilla" else 0) for a in (3, 0, 1, 2, 4, 4, 1, 0, 2, 3)]
    script.start(plan)
    out = generate(target, drafter, list(range(70, 100)), 200, SamplingConfig(), generator_for(0), clock,
                   reserve=shape.max_nodes)
    assert [c.accepted for c in out.cycles][: len(plan)] == plan
    assert all(c.nodes == (1 if name == "vanilla" else shape.max_nodes) for c in out.cycles)
    costs = noop.noop_loop(tiny_config(), torch.float32, CPU, name, shape,
                           [noop.NoopPlan(30, 40, tuple(plan))] * 3, clock, 30)
    assert costs.cycles >= 30 and costs.verify_s > 0 and costs.commit_s > 0


class TickClock:
    """Each read advances time by one tick: every timed stage of the decode loop lasts exactly one tick."""

    def __init__(self) -> None:
        self.t = -1.0

    def now(self) -> float:
        self.t += 1.0
        return self.t


def test_noop_loop_costs_and_the_cost_model_on_a_fake_clock():
    """generate reads the clock at t0…t4 of each cycle: draft, score, verify and commit last one tick each, and
    the loop's own time between cycles one more: the no-op costs are known, so is the model's cycle."""
    tree = TreeShape.parse("chain:4")
    plans = [noop.NoopPlan(20, 30, (2, 0, 4, 1) * 8)] * 2
    costs = noop.noop_loop(tiny_config(), torch.float32, CPU, "prompt-lookup", tree, plans, TickClock(), 10)
    assert (costs.tree_s, costs.score_call_s, costs.verify_s, costs.commit_s, costs.loop_s) == (1, 1, 1, 1, 1)
    target = TargetCosts(Grid.from_points([(1, 0, 10.0), (5, 0, 10.0)]), Curve((1.0,), (0.0,)))
    spec = SampleRecord("pl", "q", 0, "c", 20, tuple(range(7)), "", 7, 1.0, 0.0, 2, (2, 3), "max_new_tokens")
    van = SampleRecord("vanilla", "q", 0, "c", 20, tuple(range(7)), "", 7, 1.0, 0.0, 6, (0,) * 6, "max_new_tokens")
    pred = predict(sample_shapes([spec], [], 5), sample_shapes([van], [], 1), target,
                   DrafterCosts(None, costs), DrafterCosts(None, costs))
    assert pred.per_cycle.total == 14.0  # tree 1 + T_V 10 + verify 1 + commit 1 + loop 1
    assert pred.speedup == pytest.approx((6 * 14.0) / (2 * 14.0))  # same cycle cost, 2 cycles instead of 6


# ---- real shapes without weights ---------------------------------------------------------------


@pytest.mark.parametrize("name,body,head", [("llama2-7b", 236, 131), ("llama3-8b", 252, 525),
                                            ("qwen2.5-7b", 259, 545)])
def test_shipped_shapes_reproduce_coral_figure_2_parameter_counts(name, body, head):
    """CORAL Figure 2 (docs/methods.md §6): drafter fc + layer vs LM head, in millions."""
    cfg = SHAPES[name].drafter_config()
    with torch.device("meta"):
        params = EagleModel(cfg).parameter_count()
    assert round(params / 1e6) == body
    assert round(cfg.vocab_size * cfg.hidden_size / 1e6) == head
    assert cfg.qkv_bias == (name == "qwen2.5-7b")


TINY_SHAPE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 320, "max_position_embeddings": 512,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "eos_token_id": 2, "bos_token_id": 1}


def test_random_drafter_is_materialised_in_the_working_dtype(tmp_path):
    cfg = load_shape_from(TINY_SHAPE, tmp_path).drafter_config()
    model = random_drafter(cfg, torch.bfloat16, CPU)
    assert all(p.dtype == torch.bfloat16 and p.device == CPU and torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.inv_freq, rope_inv_freq(cfg).to(torch.bfloat16))
    assert model.layers[0].post_attention_layernorm.weight.eq(1).all()


def load_shape_from(cfg, folder):
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return load_shape(str(path))


def test_profile_of_a_random_weight_shape_from_a_config_file(tmp_path):
    shape = load_shape_from(TINY_SHAPE, tmp_path)
    report = profile_shapes([str(tmp_path / "config.json")], "float32", "cpu", 1, TreeShape.parse("chain:2"),
                               SMALL, with_target=True)[0]
    method = report.methods[0]
    # fc 2H·H + H, q/o H·H, k/v H·(2 kv heads · 16), MLP 3·H·I, norm H
    assert method.parameters == (2 * 64 * 64 + 64) + 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 64
    assert method.lm_head_parameters == 320 * 64 == shape.vocab_size * shape.hidden_size
    share, total = method.shares()
    assert 0 < share < total < 1
    assert report.target_costs is not None and report.target_regions  # --with-target on a tiny config


def test_profile_cli_shapes_need_random_weights(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_SHAPE))
    runner = CliRunner()
    bad = runner.invoke(main, ["profile", "--shape", str(path)])
    assert bad.exit_code == 2 and "--random-weights" in bad.output
    unknown = runner.invoke(main, ["profile", "--shape", "llama9-1t", "--random-weights"])
    assert unknown.exit_code == 2 and "unknown shape" in unknown.output
    good = runner.invoke(main, ["profile", "--shape", str(path), "--random-weights", "--dtype", "float32",
                                "--threads", "1", "--repeats", "1", "--noop-cycles", "10", "--tree", "chain:2",
                                "--out", str(tmp_path / "shape.json")], catch_exceptions=False)
    assert good.exit_code == 0, good.output
    assert "lm_head_share" in good.output
    saved = json.loads((tmp_path / "shape.json").read_text())
    assert saved[path.parent.name]["methods"][path.parent.name]["lm_head_parameters"] == 320 * 64
