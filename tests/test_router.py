"""CORAL's LM-head router and the FR-Spec subset (docs/methods.md §6): groupings are partitions, routed logits
are the full head's on the selected tokens, k = N reproduces the unrouted drafter, decoding stays lossless,
checkpoints round-trip and mismatches are refused, train-router runs end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import assert_speedup_model_adds_up
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from coral_bench.run.chat import render
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings, generator_for
from coral_bench.drafters.checkpoint import CheckpointError, embedding_sha256, load_checkpoint, save_checkpoint
from coral_bench.drafters.eagle import EagleDrafter, build_eagle, build_routed
from coral_bench.drafters.eagle_model import EagleModel
from coral_bench.drafters.registry import DRAFTERS, build_drafter
from coral_bench.drafters.draft_heads import HeadLayout, RoutedHead, SubsetHead
from coral_bench.drafters.router import Router, router_description
from coral_bench.drafters.vocab_grouping import (COUNTS_KEY, G2T_KEY, PARTITIONS, VocabGrouping, balanced_assign,
                                                 make_grouping)
from coral_bench.run.specs import DrafterSpec, MethodError, join_argument, split_argument
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model
from coral_bench.train.loop import drafter_config
from coral_bench.train.router_loop import RouterSettings, RouterTrainError, train_router
from coral_bench.train.store import StoreWriter
from coral_bench.core.tree import TreeShape, Verdict

D = torch.float64
V, H = 320, 64  # the tiny target
TREE = "top_k=3,depth=2,total_tokens=8"


# ---- helpers -------------------------------------------------------------------------------------
def random_counts(seed: int = 0) -> torch.Tensor:  # [V] skewed token frequencies
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(V, generator=g) ** 4 * 1000).long()


def random_router(groups: int, seed: int = 0, dtype=D) -> Router:
    router = Router(H, groups)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # fan-in normal weights, zero biases: the choice depends on the feature
        for p in router.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 if p.dim() == 2 else torch.zeros(p.shape))
    return router.to(dtype)


def grouping_for(target: Target, rule: str, groups: int) -> VocabGrouping:
    return make_grouping(rule, groups, vocab=V, head=target.lm_head_weight(), counts=random_counts())


def routed_head(target: Target, rule: str, groups: int, k: int, score: str = "renorm", seed: int = 0) -> RoutedHead:
    layout = HeadLayout.of(grouping_for(target, rule, groups), target.lm_head_weight(), None)
    return RoutedHead(random_router(groups, seed), layout, k, score, target.finish_logits)


def stage1_model(target: Target, seed: int = 3) -> EagleModel:
    model = EagleModel(drafter_config(target))
    model.init_random(torch.Generator().manual_seed(seed))
    return model.to(D)


def routed_checkpoint(folder: Path, target: Target, rule: str = "cluster", groups: int = 8, k: int = 2,
                      score: str = "renorm") -> Path:
    """A routed drafter folder (random drafter and router weights, fp64) as train-router writes one."""
    grouping = grouping_for(target, rule, groups)
    router = random_router(groups)
    meta = {"method": "coral", "router": router_description(grouping, router, k, score, not grouping.is_identity)}
    extras = {**router.tensors(), **grouping.tensors(), COUNTS_KEY: random_counts()}
    return save_checkpoint(folder, stage1_model(target), target.embedding_weight(), target.max_context,
                           metadata=meta, dtype=D, extras=extras)


def settings(name: str, checkpoint: str | None, tree: str = TREE) -> DrafterSettings:
    return DrafterSettings(name=name, tree=TreeShape.parse(tree), checkpoint=checkpoint)


def run_cycles(drafter: EagleDrafter, target: Target, prompt: list[int], cycles: int = 4) -> list:
    """Trees of a few cycles, accepting the target's greedy path (as decoding does)."""
    pre = target.prefill(torch.tensor(prompt))
    root = int(pre.logits[-1].argmax())
    drafter.begin(DraftContext(tuple(prompt), root, pre))
    trees = []
    for _ in range(cycles):
        tree = drafter.propose(root)
        trees.append(tree)
        scored = target.score(tree)
        node = 0
        path = [0]
        while True:
            want = int(scored.logits[node].argmax())
            nxt = next((c for c in tree.children[node] if tree.tokens[c] == want), None)
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
        bonus = int(scored.logits[node].argmax())
        verdict = Verdict(tuple(path), (*(tree.tokens[n] for n in path[1:]), bonus))
        target.commit(verdict.path)
        drafter.commit(verdict, scored)
        root = bonus
    return trees


# ---- grouping --------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", PARTITIONS)
@pytest.mark.parametrize("groups", [1, 7, 32])
def test_every_grouping_is_a_balanced_partition(target64, rule, groups):
    g = grouping_for(target64, rule, groups)
    assert g.rule == rule and g.groups == groups and g.vocab_size == V
    assert torch.equal(torch.sort(g.g2t).values, torch.arange(V))  # every token exactly once
    assert max(g.sizes) - min(g.sizes) <= 1 and sum(g.sizes) == V  # balanced
    for grp in range(groups):
        assert (g.group_of[g.tokens(grp)] == grp).all()
    assert g.is_identity == (rule == "contiguous" or groups == 1)
    again = grouping_for(target64, rule, groups)
    assert torch.equal(again.g2t, g.g2t) and again.starts == g.starts  # deterministic (seeded)


def test_frequency_groups_follow_the_counts_and_clusters_are_cohesive(target64):
    counts = random_counts()
    g = make_grouping("frequency", 8, vocab=V, counts=counts)
    means = [float(counts[g.tokens(i)].float().mean()) for i in range(8)]
    assert means == sorted(means, reverse=True)  # group 0 = the most frequent tokens
    assert float(counts[g.tokens(0)].min()) >= float(counts[g.tokens(1)].max())
    head = torch.nn.functional.normalize(target64.lm_head_weight().detach().float(), dim=1)

    def cohesion(grouping):  # mean cosine of each token's row with its group's mean direction
        total = 0.0
        for i in range(grouping.groups):
            rows = head[grouping.tokens(i)]
            total += float((rows @ torch.nn.functional.normalize(rows.mean(0), dim=0)).sum())
        return total / V

    assert cohesion(grouping_for(target64, "cluster", 8)) > cohesion(grouping_for(target64, "contiguous", 8)) + 0.05


def test_balanced_assignment_meets_every_capacity():
    sim = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    sim[:, 0] += 5  # everyone prefers column 0
    assign = balanced_assign(sim, torch.tensor([20, 10, 10, 10]))
    assert torch.bincount(assign, minlength=4).tolist() == [20, 10, 10, 10]
    assert sim[assign == 0, 0].min() >= sim[assign != 0, 0].max()  # column 0 keeps its best proposers


def test_bad_groupings_are_refused():
    with pytest.raises(DrafterError, match="permutation"):
        VocabGrouping("contiguous", torch.tensor([0, 1, 1, 3]), (0, 2, 4))
    with pytest.raises(DrafterError, match="non-empty"):
        VocabGrouping("contiguous", torch.arange(4), (0, 2, 2, 4))
    with pytest.raises(DrafterError, match="router_groups"):
        make_grouping("contiguous", 400, vocab=V)


# ---- routed logits -----------------------------------------------------------------------------
@pytest.mark.parametrize("rule", PARTITIONS)
@pytest.mark.parametrize("k", [1, 3])
def test_routed_logits_are_the_full_heads_on_the_selected_groups(target64, rule, k):
    head = routed_head(target64, rule, 8, k)
    feats = torch.randn(6, H, dtype=D, generator=torch.Generator().manual_seed(1))
    s = head.scores(feats)
    full = target64.logits_from_features(feats)  # [6, V]
    dense = s.dense(V)
    selected = torch.zeros(6, 8, dtype=torch.bool).scatter_(1, s.selected, True)
    in_sel = selected.gather(1, head.grouping.group_of.expand(6, V))  # [6, V] token's group chosen by the row
    torch.testing.assert_close(dense[in_sel], full[in_sel], rtol=0, atol=1e-12)
    assert torch.isneginf(dense[~in_sel]).all()
    assert s.union == tuple(selected.any(0).nonzero().flatten().tolist())
    assert s.logits.shape[1] == sum(head.grouping.sizes[g] for g in s.union)  # only the union's rows computed
    # renorm: a log-softmax over each row's selected tokens
    lp = s.dense(V, "logprobs")
    torch.testing.assert_close(lp[in_sel], (full.masked_fill(~in_sel, float("-inf")).log_softmax(-1))[in_sel],
                               rtol=0, atol=1e-12)
    top = head.top(feats, 4)
    assert top.union == len(s.union)
    assert in_sel.gather(1, top.tokens).all()  # never a token outside the row's groups


def test_calibrated_scores_are_router_probability_times_within_group_softmax(target64):
    head = routed_head(target64, "frequency", 8, 2, score="calibrated")
    feats = torch.randn(5, H, dtype=D, generator=torch.Generator().manual_seed(2))
    s = head.scores(feats)
    router_logp, sel = head.select(feats)
    full = target64.logits_from_features(feats)
    lp = s.dense(V, "logprobs")
    for r in range(5):
        for g in sel[r].tolist():
            tok = head.grouping.tokens(g)
            want = router_logp[r, g] + full[r, tok].log_softmax(-1)
            torch.testing.assert_close(lp[r, tok], want, rtol=0, atol=1e-12)
        # mass over the selected tokens = P_router(selected groups) <= 1: no inflation
        torch.testing.assert_close(lp[r].logsumexp(-1), router_logp[r, sel[r]].logsumexp(-1), rtol=0, atol=1e-12)


def test_routed_logits_follow_the_targets_logit_scaling():
    model = tiny_model(seed=1, dtype=D)
    model.config.logit_scale = 0.5
    model.config.final_logit_softcapping = 3.0
    target = Target(model, (2,))
    head = routed_head(target, "cluster", 4, 4)
    feats = torch.randn(3, H, dtype=D, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(head.scores(feats).dense(V), target.logits_from_features(feats), rtol=0, atol=1e-12)


# ---- the routed drafter ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rule", PARTITIONS)
def test_router_k_equal_to_groups_proposes_what_the_unrouted_drafter_does(model64, rule, dtype):
    target = Target(model64 if dtype == D else tiny_model(seed=0, dtype=dtype), (2,))
    unrouted = build_eagle(target, settings("eagle", "random", "top_k=3,depth=3,total_tokens=12"))
    head = routed_head(target, rule, 8, 8)
    head.router.to(dtype)
    routed = EagleDrafter(target, unrouted.model, unrouted.settings, unrouted.info, head=head)
    prompt = [1, 40, 50, 60, 70, 80]
    plain, with_router = run_cycles(unrouted, target, prompt), run_cycles(routed, target, prompt)
    for a, b in zip(plain, with_router):
        assert a.tokens == b.tokens and a.parents == b.parents
        torch.testing.assert_close(torch.tensor(a.draft_logprobs), torch.tensor(b.draft_logprobs), rtol=0,
                                   atol=1e-9 if dtype == D else 1e-5)
        assert a.head_union == () and b.head_union == (8,) * b.forwards


PROMPTS = ["Tell me a story about a cat.", "abc abc abc abc"]


@pytest.mark.parametrize("tree", ["chain:3", TREE])
@pytest.mark.parametrize("spec", ["coral-router:{ckpt}", "coral-router:{ckpt}@router_k=1@score=calibrated",
                                  "coral:{ckpt}", "coral:{ckpt}@vocab=48", "eagle:random@vocab=40@freq={store}"])
def test_greedy_output_with_a_draft_head_equals_vanilla(target64, clock, tokenizer, tmp_path, tiny_store, tree, spec):
    ckpt = routed_checkpoint(tmp_path / "routed", target64, "cluster", 8, 2)
    parsed = DrafterSpec.parse(spec.format(ckpt=ckpt, store=tiny_store) + f"@tree={tree}")
    drafter = build_drafter(target64, DrafterSettings(parsed.name, parsed.tree, parsed.checkpoint))
    vanilla = build_drafter(target64, DrafterSettings("vanilla", TreeShape.parse("chain:1")))
    for text in PROMPTS:
        ids = render(tokenizer, [text], [], None)
        van = generate(target64, vanilla, ids, 30, SamplingConfig(), generator_for(0), clock)
        out = generate(target64, drafter, ids, 30, SamplingConfig(), generator_for(0), clock,
                       reserve=parsed.tree.max_nodes)
        assert out.ids == van.ids and out.stop_reason == van.stop_reason
        routed = parsed.name == "coral-router"
        for c in out.cycles:
            assert len(c.head_union) == (c.forwards if routed else 0)
            assert all(1 <= u <= 8 for u in c.head_union)
        if "router_k=1" in spec and tree != "chain:3":
            assert any(u > 1 for c in out.cycles for u in c.head_union)  # nodes pick different groups


def test_frequency_subset_proposes_only_frequent_tokens(target64, tmp_path):
    ckpt = routed_checkpoint(tmp_path / "routed", target64)
    drafter = build_drafter(target64, settings("coral", f"{ckpt}@vocab=20", "top_k=4,depth=2,total_tokens=12"))
    allowed = set(torch.sort(random_counts(), descending=True, stable=True).indices[:20].tolist())
    assert isinstance(drafter.head, SubsetHead) and drafter.info.head["vocab"] == 20
    for tree in run_cycles(drafter, target64, [1, 30, 31, 32]):
        assert set(tree.tokens[1:]) <= allowed and tree.head_union == ()
    with pytest.raises(DrafterError, match="exceeds"):
        build_drafter(target64, settings("coral", f"{ckpt}@vocab=2", "top_k=4,depth=2,total_tokens=12"))


# ---- checkpoints -------------------------------------------------------------------------------
def test_routed_checkpoint_round_trips_and_loads_without_its_router(target64, tmp_path):
    folder = routed_checkpoint(tmp_path / "routed", target64, "frequency", 8, 2)
    ckpt = load_checkpoint(folder, target64.embedding_weight())
    assert ckpt.router["groups"] == 8 and ckpt.router["k"] == 2 and ckpt.router["partition"]["rule"] == "frequency"
    saved = load_file(str(folder / "model.safetensors"))
    for key, value in ckpt.extras.items():
        assert torch.equal(value, saved[key])
    routed = build_drafter(target64, settings("coral-router", str(folder)))
    assert isinstance(routed.head, RoutedHead) and routed.head.k == 2 and routed.head.grouping.rule == "frequency"
    assert torch.equal(routed.head.grouping.g2t, saved[G2T_KEY])
    assert routed.head.layout.copied and routed.info.head["head_copy_bytes"] == V * H * 8
    assert routed.parameter_count() == routed.model.parameter_count() + (H * 256 + 256 + 256 * 8 + 8)
    plain = build_drafter(target64, settings("coral", str(folder)))  # the same checkpoint, no router
    assert plain.head is None and plain.info.head == {"kind": "full"}
    for (name, a), b in zip(routed.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name
    override = build_drafter(target64, settings("coral-router", f"{folder}@router_k=8@score=calibrated"))
    assert override.head.k == 8 and override.head.score == "calibrated"
    contiguous = build_drafter(target64, settings("coral-router", str(routed_checkpoint(tmp_path / "c", target64,
                                                                                       "contiguous"))))
    assert not contiguous.head.layout.copied  # views of the target's own head
    assert contiguous.head.layout.weight.data_ptr() == target64.lm_head_weight().data_ptr()


def _tamper(folder: Path, tensors: dict | None = None, drop_section: bool = False) -> Path:
    state = load_file(str(folder / "model.safetensors"))
    state.update(tensors or {})
    save_file(state, str(folder / "model.safetensors"))
    if drop_section:
        cfg = json.loads((folder / "config.json").read_text())
        del cfg["coral_bench"]["router"]
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_routers_that_do_not_fit_the_target_are_refused(target64, tmp_path):
    emb = target64.embedding_weight()
    short = _tamper(routed_checkpoint(tmp_path / "a", target64), {G2T_KEY: torch.arange(300)})
    with pytest.raises(CheckpointError, match=r"router.*router\.g2t \(300,\)"):
        load_checkpoint(short, emb)
    wide = _tamper(routed_checkpoint(tmp_path / "b", target64),
                   {"router.proj.weight": torch.zeros(256, 96, dtype=D)})
    with pytest.raises(CheckpointError, match="router.proj.weight"):
        build_drafter(target64, settings("coral-router", str(wide)))
    with pytest.raises(CheckpointError, match="no coral_bench.router description"):
        load_checkpoint(_tamper(routed_checkpoint(tmp_path / "c", target64), drop_section=True), emb)
    # a grouping of another vocabulary, a router of another hidden size: clear errors at build time too
    other = make_grouping("contiguous", 4, vocab=256)
    with pytest.raises(DrafterError, match="vocabulary of 256"):
        HeadLayout.of(other, target64.lm_head_weight(), None)
    layout = HeadLayout.of(make_grouping("contiguous", 4, vocab=V), target64.lm_head_weight(), None)
    with pytest.raises(DrafterError, match="hidden size"):
        RoutedHead(Router(96, 4).to(D), layout, 2)
    with pytest.raises(DrafterError, match="router_k"):
        RoutedHead(random_router(4), layout, 5)
    plain = save_checkpoint(tmp_path / "plain", stage1_model(target64), emb, target64.max_context)
    with pytest.raises(DrafterError, match="no LM-head router"):
        build_drafter(target64, settings("coral-router", str(plain)))
    with pytest.raises(DrafterError, match="@freq=STORE"):
        build_drafter(target64, settings("eagle2", f"{plain}@vocab=64"))
    with pytest.raises(DrafterError, match="coral-router"):
        build_drafter(target64, settings("coral", f"{plain}@router_k=2"))
    with pytest.raises(DrafterError, match="train-router"):
        build_routed(target64, settings("coral-router", None))


def test_drafter_spec_settings_fold_into_the_checkpoint_argument():
    spec = DrafterSpec.parse("fr=eagle2:/ckpt/dir@tree=chain:3@vocab=8192")
    assert (spec.label, spec.name, spec.tree, spec.checkpoint) == ("fr", "eagle2", TreeShape.parse("chain:3"),
                                                                  "/ckpt/dir@vocab=8192")
    assert split_argument(spec.checkpoint) == ("/ckpt/dir", {"vocab": "8192"})
    assert DrafterSpec.parse("coral-router:X@score=calibrated@router_k=2").checkpoint == "X@router_k=2@score=calibrated"
    assert split_argument(join_argument(None, {"vocab": "5"})) == (None, {"vocab": "5"})
    assert DrafterSpec.parse("eagle").checkpoint is None
    for bad in ("eagle2:X@colour=red", "eagle2:X@vocab=1@vocab=2", "eagle2:X@vocab"):
        with pytest.raises(MethodError):
            DrafterSpec.parse(bad)
    assert DRAFTERS["coral-router"].needs_checkpoint


# ---- train-router ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """Ten fp64 conversations of the tiny target (response tokens in the loss)."""
    target = Target(tiny_model(seed=0, dtype=D), (2,), name="tiny64")
    path = tmp_path_factory.mktemp("store") / "store"
    manifest = {"target": {"name": "tiny-random", "embedding_sha256": embedding_sha256(target.embedding_weight())},
                "features": {"what": "post-norm features", "dtype": "float64"}, "complete": True}
    writer = StoreWriter(path, manifest, shard_tokens=80, dtype=D)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        length = int(torch.randint(8, 20, (1,), generator=g))
        ids = torch.cat((torch.tensor([1]), torch.randint(3, 259, (length - 2,), generator=g), torch.tensor([2])))
        mask = torch.zeros(length, dtype=torch.bool)
        mask[length // 3:] = True
        with torch.no_grad():
            feats = target.model.model(input_ids=ids[None]).last_hidden_state[0]
        writer.add(ids, feats, mask)
    writer.close()
    return path


@pytest.mark.parametrize("rule,label", [("contiguous", "mass"), ("frequency", "argmax"), ("cluster", "mass")])
def test_train_router_end_to_end(target64, tiny_store, tmp_path, rule, label):
    stage1 = save_checkpoint(tmp_path / "stage1", stage1_model(target64), target64.embedding_weight(),
                             target64.max_context, metadata={"method": "hass"})
    s = RouterSettings(groups=4, k=2, partition=rule, label=label, steps=2, batch_tokens=40, eval_fraction=0.3,
                       dtype="fp64", lr=1e-2, epochs=2)
    result = train_router(stage1, tiny_store, tmp_path / "routed", s, target64, target_name="tiny-random")
    assert result.optimizer_steps >= 2 and result.eval is not None and len(result.eval.rows) == 2
    assert all(n > 0 for n in result.eval.rows)
    full = result.eval.at(4)  # k = N: every group selected
    assert full.target_argmax == (1.0, 1.0) and full.drafter_top == (1.0, 1.0)
    torch.testing.assert_close(torch.tensor(full.mass, dtype=D), torch.ones(2, dtype=D), rtol=0, atol=1e-9)
    assert [r.k for r in result.eval.recall] == [1, 2, 4]
    assert all(0 <= v <= 1 for r in result.eval.recall for v in (*r.target_argmax, *r.drafter_top, *r.mass))
    assert result.head_copy_bytes == (0 if rule == "contiguous" else V * H * 8)
    log = [json.loads(x) for x in (tmp_path / "routed" / "router-log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "step" for r in log) == result.optimizer_steps and log[-1]["kind"] == "eval"
    ckpt = load_checkpoint(tmp_path / "routed", target64.embedding_weight())
    assert ckpt.metadata["method"] == "hass"  # the stage-1 description is kept
    section = ckpt.router
    assert section["partition"]["rule"] == rule and section["training"]["settings"]["label"] == label
    assert section["training"]["stage1"]["checkpoint"] == str(stage1)
    before = load_checkpoint(stage1, target64.embedding_weight())
    for key, value in before.state.items():
        assert torch.equal(ckpt.state[key], value), key  # the stage-1 drafter is frozen
    assert int(ckpt.extras[COUNTS_KEY].sum()) > 0
    drafter = build_drafter(target64, settings("coral-router", str(tmp_path / "routed")))
    assert drafter.head.grouping.rule == rule
    with pytest.raises(RouterTrainError, match="already holds"):
        train_router(stage1, tiny_store, tmp_path / "routed", s, target64)


def test_router_training_cap_keeps_the_held_out_split(target64, tiny_store, tmp_path):
    stage1 = save_checkpoint(tmp_path / "stage1", stage1_model(target64), target64.embedding_weight(),
                             target64.max_context)
    base = dict(groups=4, k=2, steps=2, batch_tokens=40, eval_fraction=0.3, dtype="fp64")
    full = train_router(stage1, tiny_store, tmp_path / "full", RouterSettings(**base), target64)
    capped = train_router(stage1, tiny_store, tmp_path / "capped", RouterSettings(**base, max_sequences=2), target64)
    meta = lambda r: r.metadata["router"]["training"]
    assert meta(full)["data"]["train_sequences"] == 7 and meta(capped)["data"]["train_sequences"] == 2
    assert 0 < capped.rows < full.rows
    assert capped.eval.rows == full.eval.rows  # the same held-out sequences
    assert meta(capped)["settings"]["max_sequences"] == 2
    with pytest.raises(RouterTrainError, match="max_sequences"):
        RouterSettings(**base, max_sequences=0)


def test_cli_train_router(target64, tiny_store, tmp_path):
    from coral_bench.cli import main

    stage1 = save_checkpoint(tmp_path / "stage1", stage1_model(target64), target64.embedding_weight(),
                             target64.max_context)
    common = ["train-router", "--drafter", str(stage1), "--data", str(tiny_store), "--router-groups", "4",
              "--partition", "cluster", "--steps", "2", "--dtype", "fp64", "--eval-fraction", "0.3",
              "--batch-tokens", "60", "--threads", "1"]
    result = CliRunner().invoke(main, [*common, "--router-k", "1", "--out", str(tmp_path / "r")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "r" / "config.json").read_text())["coral_bench"]
    assert meta["router"]["k"] == 1 and meta["router"]["training"]["command"].startswith("coral-bench")
    assert (tmp_path / "r" / "router-log.jsonl").exists()
    bad = CliRunner().invoke(main, [*common, "--router-k", "9", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "router k" in bad.output


def test_routed_and_unrouted_drafters_run_side_by_side(target64, tmp_path):
    """`coral-bench run` with the same checkpoint as coral-router, coral and an FR-Spec subset; replay too."""
    from coral_bench.cli import main

    ckpt = routed_checkpoint(tmp_path / "routed", target64, "cluster", 8, 2)
    out = tmp_path / "run"
    args = ["run", "--suite", "mtbench", "--target", "tiny-random", "--dtype", "float64", "--threads", "1",
            "--limit", "1", "--max-new-tokens", "10", "--drafter", f"coral-router:{ckpt}", "--drafter", f"coral:{ckpt}",
            "--drafter", f"fr=coral:{ckpt}@vocab=64@tree=chain:3", "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["drafters"]) == {"coral-router", "coral", "fr"}
    assert all(row["equal_to_vanilla"] == 1.0 for row in results["drafters"].values())
    # each row names the weights it measured: same file, same hash, the head that was used
    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    weights = {label: row["weights"] for label, row in results["drafters"].items()}
    assert {w["weights_sha256"] for w in weights.values()} == {digest}
    assert {w["head"]["kind"] for w in weights.values()} == {"routed", "full", "frequency-subset"}
    assert weights["coral-router"]["head"]["groups"] == 8 and weights["fr"]["head"]["vocab"] == 64
    cycles = [json.loads(line) for line in (out / "cycles.jsonl").read_text().splitlines()]
    for row in cycles:
        assert (len(row["head_union"]) == row["forwards"]) if row["method"] == "coral-router" else not row["head_union"]
    replay = CliRunner().invoke(main, ["replay", str(out), "--drafter", f"coral-router:{ckpt}@router_k=8", "--threads", "1"],
                                catch_exceptions=False)
    assert replay.exit_code == 0, replay.output
    # The cost model: routed and subset heads are costed by the head rows they compute (draft_costs.HeadRowCosts).
    profile = CliRunner().invoke(main, ["profile", "--run", str(out), "--nodes", "1,2,4,8", "--repeats", "1",
                                        "--noop-cycles", "10"], catch_exceptions=False)
    assert profile.exit_code == 0, profile.output
    methods = json.loads((out / "profile.json").read_text())["methods"]
    assert methods["coral-router"]["head_rows"]["kind"] == "routed" and methods["coral"]["head_rows"] is None
    assert methods["fr"]["head_rows"]["kind"] == "frequency-subset" and methods["fr"]["head_rows"]["rows_per_union"] == 64
    estimate = CliRunner().invoke(main, ["estimate-speedup", str(out)], catch_exceptions=False)
    assert estimate.exit_code == 0, estimate.output
    drafters = json.loads((out / "results.json").read_text())["drafters"]
    for label in ("coral-router", "coral", "fr"):
        assert_speedup_model_adds_up(drafters[label]["speedup_model"])


def test_router_examples_are_labelled_from_the_target_distribution(target64, tiny_store):
    from coral_bench.train.batching import collate
    from coral_bench.train.loop import Frozen
    from coral_bench.train.multistep import MultiStepDrafter
    from coral_bench.train.router_loop import router_rows
    from coral_bench.train.store import FeatureStore

    store = FeatureStore(tiny_store)
    batch = collate(store, [0, 1, 2], D)
    grouping = grouping_for(target64, "cluster", 4)
    core = MultiStepDrafter(stage1_model(target64), 3)
    rows = router_rows(core, batch, Frozen(target64, D), grouping, 4, chunk=7)  # chunks smaller than a batch
    t = batch.positions
    counts = [int((batch.valid & (t >= j - 1)).sum()) for j in (1, 2, 3)]
    assert rows.depth.tolist() == [1] * counts[0] + [2] * counts[1] + [3] * counts[2]
    with torch.no_grad():
        outs = core(target64.embed(batch.next_ids), batch.features, batch.positions)
    for j in (1, 3):
        keep = batch.valid & (t >= j - 1)
        p = target64.logits_from_features(batch.targets[keep]).softmax(-1)
        mine = rows.depth == j
        want = torch.stack([p[:, grouping.tokens(g)].sum(-1) for g in range(4)], dim=1)
        torch.testing.assert_close(rows.mass[mine], want, rtol=0, atol=1e-12)
        assert torch.equal(rows.target_group[mine], grouping.group_of[p.argmax(-1)])
        torch.testing.assert_close(rows.features[mine], outs[j - 1][keep], rtol=0, atol=0)
        draft_top = target64.logits_from_features(outs[j - 1][keep]).topk(4).indices
        assert torch.equal(rows.draft_groups[mine], grouping.group_of[draft_top])
