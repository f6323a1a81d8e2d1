"""Multi-step training (docs/methods.md §5): the masked training forward equals the inference drafter fed its
own features, padding gets zero gradient, resume is exact, 2-process DDP equals 1 process, output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from coral_bench.core.drafter import DraftContext, DrafterSettings
from coral_bench.drafters.checkpoint import embedding_sha256, load_checkpoint
from coral_bench.drafters.eagle import EagleDrafter, EagleInfo, training_summary
from coral_bench.drafters.eagle_model import EagleModel
from coral_bench.core.target import Target, TargetOutput
from coral_bench.train.batching import TrainBatch, collate, plan_epoch, shard, slot_count
from coral_bench.train.losses import SingleProcess
from coral_bench.train.loop import Frozen, batch_loss, drafter_config, train
from coral_bench.train.training_data import TrainingData
from coral_bench.train.multistep import MultiStepDrafter, step_mask, step_valid
from coral_bench.train.reporting import NullReporter
from coral_bench.train.settings import TrainError, settings_for
from coral_bench.train.state import STATE_DIR, STATE_FILE
from coral_bench.train.store import FeatureStore, StoreWriter
from coral_bench.core.tree import TreeShape

D = torch.float64
REPO = Path(__file__).resolve().parent.parent


def features_of(target: Target, ids: torch.Tensor) -> torch.Tensor:  # [L, H] post-norm features
    with torch.no_grad():
        return target.model.model(input_ids=ids[None]).last_hidden_state[0]


def random_ids(length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat((torch.tensor([1]), torch.randint(3, 259, (length - 1,), generator=g)))


def random_drafter(target: Target, seed: int = 3) -> EagleModel:
    model = EagleModel(drafter_config(target))
    g = torch.Generator().manual_seed(seed)
    model.init_random(g)
    with torch.no_grad():
        model.layers[0].post_attention_layernorm.weight.uniform_(0.5, 1.5, generator=g)
    return model.to(D)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """Twelve fp64 conversations (prompt masked out, response in the loss), lengths 6…24, in 3 shards."""
    from coral_bench.run.tiny import tiny_model

    target = Target(tiny_model(seed=0, dtype=D), (2,), name="tiny64")
    path = tmp_path_factory.mktemp("store") / "store"
    manifest = {"target": {"name": "tiny-random", "embedding_sha256": embedding_sha256(target.embedding_weight())},
                "features": {"what": "post-norm features", "dtype": "float64"}, "complete": True}
    writer = StoreWriter(path, manifest, shard_tokens=60, dtype=D)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        length = int(torch.randint(6, 25, (1,), generator=g))
        ids = random_ids(length, 100 + i)
        ids[-1] = 2  # the response's final <|im_end|>, in the loss
        mask = torch.zeros(length, dtype=torch.bool)
        mask[int(torch.randint(2, length - 2, (1,), generator=g)):] = True
        writer.add(ids, features_of(target, ids), mask)
    writer.close()
    return path


# ---- the multi-step forward equals the inference drafter ------------------------------------------
class ForcingTarget:
    """The real target (embedding, sizes) whose LM head records each feature the drafter asks logits
    for and answers with logits whose argmax is the next ground-truth token: the inference drafter's
    chain then follows the training sequence, self-feeding its own predicted features."""

    def __init__(self, target: Target, forced: list[int]):
        self._target = target
        self.forced = forced
        self.seen: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self._target, name)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        self.seen.append(features.detach().clone())
        token = self.forced[len(self.seen) - 1]
        logits = torch.zeros(features.shape[0], self._target.vocab_size, dtype=D)
        logits[:, token] = 10.0
        return logits


def test_masked_multistep_forward_equals_the_inference_drafter(target64):
    """For every slot t and step j ≤ 3: the training forward's G^{(j)}_t equals what EagleDrafter computes
    with real features in its cache up to slot t − (j − 1) and then j − 1 self-fed chain forwards."""
    steps = 3
    model = random_drafter(target64)
    ids = random_ids(11, 7)
    feats = features_of(target64, ids)  # [L, H]
    slots = ids.shape[0] - 1
    # Training side: the sequence padded into a batch with a longer one (padding must not matter).
    other = random_ids(15, 8)
    batch = collate_pair(target64, (ids, feats), (other, features_of(target64, other)))
    core = MultiStepDrafter(model, steps)
    with torch.no_grad():
        trained = core(target64.embed(batch.next_ids), batch.features, batch.positions)

    compared = 0
    for real in range(1, slots + 1):  # real-feature slots 0…real−1 in the drafter cache
        forced = [int(ids[real + i]) if real + i < ids.shape[0] else 0 for i in range(1, steps + 1)]
        fake = ForcingTarget(target64, forced)
        drafter = EagleDrafter(fake, model, DrafterSettings(name="eagle2", tree=TreeShape.parse(f"chain:{steps}")),
                               EagleInfo(checkpoint=None, embedding="target", config=model.config))
        prefill = TargetOutput(logits=torch.zeros(1, target64.vocab_size, dtype=D), features=feats[:real])
        drafter.begin(DraftContext(prompt_ids=tuple(ids[:real].tolist()), first_token=int(ids[real]), prefill=prefill))
        tree = drafter.propose(int(ids[real]))
        assert tree.tokens[1:] == tuple(forced)  # the chain followed the ground truth
        assert len(fake.seen) == steps
        for j in range(1, steps + 1):
            t = real - 1 + (j - 1)  # level j is produced at slot real − 1 + (j − 1)
            if t < slots:
                torch.testing.assert_close(trained[j - 1][0, t], fake.seen[j - 1][0], rtol=0, atol=1e-12)
                compared += 1
    assert compared == slots + (slots - 1) + (slots - 2)  # every t ≥ j − 1 for j = 1, 2, 3


def collate_pair(target, *seqs) -> TrainBatch:
    """A padded batch from (ids, features) pairs, every slot in the loss."""
    width = max(slot_count(ids.shape[0]) for ids, _ in seqs)
    h = seqs[0][1].shape[1]
    b = len(seqs)
    next_ids = torch.zeros(b, width, dtype=torch.long)
    features = torch.zeros(b, width, h, dtype=D)
    targets = torch.zeros(b, width, h, dtype=D)
    real = torch.zeros(b, width, dtype=torch.bool)
    for r, (ids, f) in enumerate(seqs):
        n = ids.shape[0] - 1
        next_ids[r, :n], features[r, :n], targets[r, :n], real[r, :n] = ids[1:], f[:-1], f[1:], True
    valid = real.clone()
    valid[torch.arange(b), real.sum(1) - 1] = False  # the last slot has no label
    return TrainBatch(next_ids, features, targets, valid, real, tuple(range(b)))


def test_slots_without_history_keep_the_real_feature(target64):
    """HASS's choice: at slots t < j − 1, step j equals step t + 1 (history starts at the real f_0)."""
    model = random_drafter(target64)
    ids = random_ids(9, 4)
    batch = collate_pair(target64, (ids, features_of(target64, ids)))
    with torch.no_grad():
        out = MultiStepDrafter(model, 4)(target64.embed(batch.next_ids), batch.features, batch.positions)
    for j in range(2, 5):
        for t in range(j - 1):
            torch.testing.assert_close(out[j - 1][:, t], out[t][:, t], rtol=0, atol=1e-12)
        assert (out[j - 1][:, j - 1] - out[j - 2][:, j - 1]).abs().max() > 1e-6  # a real difference from t = j − 1 on


def test_history_exclude_drops_slots_without_self_predicted_history():
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert all(v is valid for v in step_valid(valid, 3, "keep-real"))
    masks = step_valid(valid, 3, "exclude")
    assert [m[0].tolist() for m in masks] == [[True] * 5, [False] + [True] * 4, [False, False] + [True] * 3]


def test_step_mask_is_the_causal_block_plus_one_diagonal_per_earlier_step():
    m = step_mask(5, 3)[0, 0]
    assert m.shape == (5, 15)
    assert m.sum(1).tolist() == [1, 2, 3, 4, 5]  # t − 1 real keys (when t ≥ 2) + one per step 2, 3
    assert m[4, :5].tolist() == [True, True, True, False, False]
    assert m[4, 5:10].nonzero().flatten().tolist() == [3] and m[4, 10:].nonzero().flatten().tolist() == [4]


def test_detached_step_inputs(target64):
    model = random_drafter(target64)
    ids = random_ids(8, 2)
    batch = collate_pair(target64, (ids, features_of(target64, ids)))
    for detach in (True, False):
        out = MultiStepDrafter(model, 2, detach_inputs=detach)(target64.embed(batch.next_ids), batch.features,
                                                               batch.positions)
        out[0].retain_grad()
        out[1].sum().backward()
        assert (out[0].grad is None or float(out[0].grad.abs().max()) == 0) == detach
        model.zero_grad()


# ---- padding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,extra", [("eagle2", {}), ("hass", {}), ("coral", {}),
                                          ("coral", {"csra_negatives": "in-batch"})])
def test_padded_slots_get_zero_gradient(target64, method, extra):
    """Padded slots get exactly zero gradient, and what padding holds does not change any gradient."""
    model = random_drafter(target64)
    a, b = random_ids(7, 1), random_ids(13, 2)
    base = collate_pair(target64, (a, features_of(target64, a)), (b, features_of(target64, b)))
    settings = settings_for(method, dtype="fp64", **extra)
    core = MultiStepDrafter(model, settings.steps)
    grads = []
    for garbage in (False, True):
        feats = base.features.clone()
        ids = base.next_ids.clone()
        if garbage:
            feats[~base.real] = torch.randn(int((~base.real).sum()), feats.shape[2], dtype=D)
            ids[~base.real] = 77
        feats.requires_grad_(True)
        batch = TrainBatch(ids, feats, base.targets, base.valid, base.real, base.sequences)
        model.zero_grad()
        combined, _ = batch_loss(core, batch, Frozen(target64, D), settings, SingleProcess())
        combined.local.backward()
        assert float(feats.grad[~base.real].abs().max()) == 0.0
        assert float(feats.grad[base.real].abs().max()) > 0
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-13)


# ---- batching ----------------------------------------------------------------------------------
def test_plans_are_bucketed_deterministic_and_cover_every_sequence(store_dir):
    store = FeatureStore(store_dir)
    lengths = store.lengths()
    idx = list(range(len(store)))
    plan = plan_epoch(idx, lengths, 40, 1, seed=0, epoch=0)
    assert plan == plan_epoch(idx, lengths, 40, 1, seed=0, epoch=0)
    assert plan != plan_epoch(idx, lengths, 40, 1, seed=0, epoch=1)
    assert sorted(i for b in plan for i in b) == idx
    for batch in plan:
        assert len(batch) == 1 or len(batch) * max(slot_count(lengths[i]) for i in batch) <= 40
    two = plan_epoch(idx, lengths, 10, 2, seed=0, epoch=0)  # tiny budget: still ≥ 2 sequences per batch
    assert all(len(b) >= 2 for b in two)
    parts = [shard(two[0], lengths, r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(two[0]) and parts[0] and parts[1]


def test_collate_masks_follow_the_store(store_dir):
    store = FeatureStore(store_dir)
    batch = collate(store, [0, 1], D)
    for r in range(2):
        seq = store[r]
        n = seq.ids.shape[0] - 1
        assert batch.real[r].sum() == n
        assert batch.valid[r, : n - 1].tolist() == seq.loss_mask[2:].tolist()
        assert not batch.valid[r, n - 1:].any()
        torch.testing.assert_close(batch.targets[r, : n], seq.features[1:])


# ---- the loop ----------------------------------------------------------------------------------
SMALL = dict(dtype="fp64", batch_tokens=40, epochs=2, eval_fraction=0.2, feature_noise=0.05)


class StopAt(NullReporter):
    """Kills the run after ``step`` optimizer steps, as a crash would (before the next checkpoint)."""

    def __init__(self, step: int):
        self.stop = step

    def step(self, log) -> None:
        if log.step == self.stop:
            raise KeyboardInterrupt


def final_state(out: Path) -> dict:
    return torch.load(out / STATE_DIR / STATE_FILE, weights_only=True)


def log_steps(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "train-log.jsonl").read_text().splitlines()) if r["kind"] == "step"]


def test_resume_equals_uninterrupted(store_dir, target64, tmp_path):
    settings = settings_for("coral", checkpoint_every=2, **SMALL)
    whole = train(store_dir, tmp_path / "whole", settings, target64)
    assert whole.optimizer_steps >= 5
    with pytest.raises(KeyboardInterrupt):
        train(store_dir, tmp_path / "cut", settings, target64, reporter=StopAt(3))
    assert final_state(tmp_path / "cut")["position"]["optimizer_steps"] == 2
    with pytest.raises(TrainError, match="resume"):
        train(store_dir, tmp_path / "cut", settings, target64)
    with pytest.raises(TrainError, match="lr"):
        train(store_dir, tmp_path / "cut", settings_for("coral", checkpoint_every=2, lr=1e-3, **SMALL), target64,
              resume=True)
    resumed = train(store_dir, tmp_path / "cut", settings, target64, resume=True)
    assert resumed.optimizer_steps == whole.optimizer_steps and resumed.tokens == whole.tokens
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    steps_a, steps_b = log_steps(tmp_path / "whole"), log_steps(tmp_path / "cut")
    assert [r["step"] for r in steps_b] == list(range(1, whole.optimizer_steps + 1))  # no duplicate lines
    assert [r["loss"] for r in steps_a] == [r["loss"] for r in steps_b]


def test_time_limit_stops_cleanly_and_resume_finishes(store_dir, target64, tmp_path):
    settings = settings_for("hass", **SMALL)
    whole = train(store_dir, tmp_path / "whole", settings, target64)
    cut = train(store_dir, tmp_path / "cut", settings, target64, time_limit_s=0.0)
    assert cut.optimizer_steps == 1 and not cut.metadata["budget"]["complete"]
    assert load_checkpoint(tmp_path / "cut", target64.embedding_weight()).metadata["budget"]["complete"] is False
    resumed = train(store_dir, tmp_path / "cut", settings, target64, resume=True)
    assert resumed.metadata["budget"]["complete"] and resumed.optimizer_steps == whole.optimizer_steps
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_prefetching_the_next_batch_changes_nothing(store_dir, target64, tmp_path):
    settings = settings_for("coral", **SMALL)
    plain = train(store_dir, tmp_path / "plain", settings, target64, prefetch=False)
    ahead = train(store_dir, tmp_path / "ahead", settings, target64, prefetch=True)
    assert ahead.optimizer_steps == plain.optimizer_steps >= 5
    a, b = final_state(tmp_path / "plain"), final_state(tmp_path / "ahead")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["loss"] for r in log_steps(tmp_path / "plain")] == [r["loss"] for r in log_steps(tmp_path / "ahead")]
    cut = train(store_dir, tmp_path / "cut", settings, target64, prefetch=True, time_limit_s=0.0)  # a batch in flight
    assert cut.optimizer_steps == 1
    train(store_dir, tmp_path / "cut", settings, target64, prefetch=True, resume=True)
    c = final_state(tmp_path / "cut")
    for key in a["model"]:
        assert torch.equal(a["model"][key], c["model"][key]), key


def test_most_frequent_breaks_ties_by_id_and_returns_ascending_ids():
    from coral_bench.train.training_data import most_frequent

    counts = torch.tensor([5, 9, 0, 9, 1, 5])
    assert most_frequent(counts, 3).tolist() == [0, 1, 3]  # 9, 9, then the lower-id 5
    assert most_frequent(counts, 6).tolist() == list(range(6))
    with pytest.raises(TrainError, match="loss_vocab"):
        most_frequent(counts, 7)


def test_restricted_head_renormalises_over_the_chosen_tokens(target64):
    feats = torch.randn(5, target64.hidden_size, dtype=D, generator=torch.Generator().manual_seed(1))
    full = Frozen(target64, D)
    every = Frozen(target64, D, torch.arange(target64.vocab_size))
    torch.testing.assert_close(every.target_logp(feats), full.target_logp(feats), rtol=0, atol=0)
    some = torch.tensor([3, 7, 11, 40])
    restricted = Frozen(target64, D, some)
    want = torch.log_softmax(full.head(feats)[:, some], -1)  # the full logits of those tokens, renormalised
    torch.testing.assert_close(restricted.target_logp(feats), want, rtol=0, atol=1e-12)
    assert restricted.full().vocab is None


def test_loss_vocab_trains_and_is_recorded(store_dir, target64, tmp_path):
    whole = train(store_dir, tmp_path / "all", settings_for("hass", loss_vocab=target64.vocab_size, **SMALL), target64)
    base = train(store_dir, tmp_path / "base", settings_for("hass", **SMALL), target64)
    a, b = final_state(tmp_path / "all"), final_state(tmp_path / "base")
    for key in a["model"]:  # every token kept: the same training as the full vocabulary
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-12)
    assert whole.metadata["loss_vocab"]["coverage"] == 1.0
    cut = train(store_dir, tmp_path / "cut", settings_for("hass", loss_vocab=20, **SMALL), target64)
    meta = cut.metadata
    assert meta["loss_vocab"]["tokens"] == 20 and 0 < meta["loss_vocab"]["coverage"] < 1
    assert any("20 most frequent" in note for note in meta["deviations"])
    assert base.metadata["loss_vocab"] is None
    assert len(cut.eval.accuracy) == 3 and cut.eval.terms  # held-out metrics over the full vocabulary


def test_max_sequences_trains_on_a_prefix_with_the_same_held_out_split(store_dir, target64, tmp_path):
    small = {**SMALL, "loss_vocab": 20}
    full = train(store_dir, tmp_path / "full", settings_for("hass", **small), target64)
    capped = train(store_dir, tmp_path / "capped", settings_for("hass", max_sequences=2, **small), target64)
    opened = TrainingData.open(store_dir, settings_for("hass", **small), 1, target64)
    assert capped.metadata["data"]["train_sequences"] == 2 < full.metadata["data"]["train_sequences"]
    assert capped.metadata["data"]["eval_sequences"] == full.metadata["data"]["eval_sequences"]
    assert capped.tokens < full.tokens and capped.metadata["settings"]["max_sequences"] == 2
    # the restricted vocabulary comes from the whole training split, not the prefix
    assert capped.metadata["loss_vocab"]["ids_sha256"] == full.metadata["loss_vocab"]["ids_sha256"]
    assert capped.tokens == opened.slots_of(opened.train[:2]) * SMALL["epochs"]
    with pytest.raises(TrainError, match="max_sequences"):
        settings_for("hass", max_sequences=0)


def test_split_seed_fixes_the_held_out_split_across_seeds(store_dir, target64):
    def split(**kw):
        data = TrainingData.open(store_dir, settings_for("hass", eval_fraction=0.3, **kw), 1, target64)
        return data.train, data.eval

    assert split(seed=1, split_seed=0) == split(seed=0)  # same held-out sequences, same training subset
    assert split(seed=1, split_seed=0) != split(seed=1)  # without it the split follows --seed
    assert settings_for("hass", seed=3).held_out_seed == 3


def test_output_is_an_eagle_checkpoint_with_provenance(store_dir, target64, tmp_path):
    settings = settings_for("hass", **SMALL)
    result = train(store_dir, tmp_path / "hass", settings, target64, target_name="tiny-random")
    ckpt = load_checkpoint(tmp_path / "hass", target64.embedding_weight())
    assert ckpt.weights_file == "model.safetensors" and ckpt.embed_tokens is None
    assert all(v.dtype == torch.bfloat16 for v in ckpt.state.values())
    meta = ckpt.metadata
    assert meta["method"] == "hass" and meta["loss"]["distill_k"] == 10 and meta["loss"]["distill_weight"] == 1.0
    assert meta["multistep"]["steps"] == 3 and meta["multistep"]["history"] == "keep-real"
    assert meta["data"]["manifest_sha256"] == TrainingData.open(store_dir, settings, 1, target64).manifest_sha256
    assert meta["budget"]["optimizer_steps"] == result.optimizer_steps and meta["budget"]["tokens"] == result.tokens
    assert "git_hash" in meta and meta["eval"]["accuracy"] and len(meta["eval"]["accuracy"]) == 3
    records = [json.loads(x) for x in (tmp_path / "hass" / "train-log.jsonl").read_text().splitlines()]
    assert {"regression/3", "ce/3", "topk/3"} <= set(records[0]["terms"])
    assert sum(r["kind"] == "eval" for r in records) == 2  # one per epoch
    with pytest.raises(TrainError, match="holds a training state"):
        train(store_dir, tmp_path / "hass", settings, target64)


def test_bf16_autocast_trains(store_dir, tmp_path):
    from coral_bench.run.tiny import tiny_model

    target32 = Target(tiny_model(seed=0, dtype=torch.float32), (2,), name="tiny32")
    result = train(store_dir, tmp_path / "bf16", settings_for("coral", **{**SMALL, "dtype": "bf16", "epochs": 1}),
                   target32)
    steps = log_steps(tmp_path / "bf16")
    assert result.optimizer_steps == len(steps) and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert result.metadata["budget"]["dtype"] == "bf16"


def test_refuses_stores_it_cannot_train_on(store_dir, target64, tmp_path):
    import shutil

    for change, message in ((dict(complete=False), "incomplete"), (dict(features=None), "ids-only"),
                            (dict(target={"name": "other", "embedding_sha256": "0" * 64}), "another target")):
        copy = tmp_path / message.replace(" ", "-")
        shutil.copytree(store_dir, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(TrainError, match=message):
            train(copy, tmp_path / "out", settings_for("eagle2", **SMALL), target64)



def ids_only_copy(store_dir: Path, path: Path) -> Path:
    """The store's ids and loss masks without features (as ``gen-data --ids-only`` writes them)."""
    source = FeatureStore(store_dir)
    manifest = {**source.manifest, "features": None}
    manifest.pop("shards", None)
    writer = StoreWriter(path, manifest, shard_tokens=60, dtype=D)
    for i in range(len(source)):
        seq = source[i]
        writer.add(seq.ids, torch.empty(seq.ids.shape[0], 0, dtype=D), seq.loss_mask)
    writer.close()
    return path


def test_online_features_train_as_stored_features_do(store_dir, target64, tmp_path):
    """``--online-features`` on an ids-only store: the target's teacher-forced features, computed per
    batch, give the same run as the stored features (fp64, up to the batched forward's rounding)."""
    ids_only = ids_only_copy(store_dir, tmp_path / "ids")
    with pytest.raises(TrainError, match="ids-only"):
        train(ids_only, tmp_path / "refused", settings_for("coral", **SMALL), target64)
    stored = train(store_dir, tmp_path / "stored", settings_for("coral", **SMALL), target64)
    online = train(ids_only, tmp_path / "online", settings_for("coral", features="online", **SMALL), target64)
    assert online.optimizer_steps == stored.optimizer_steps >= 5 and online.tokens == stored.tokens
    a, b = final_state(tmp_path / "stored")["model"], final_state(tmp_path / "online")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-9, atol=1e-11, msg=key)
    loss_a = [r["loss"] for r in log_steps(tmp_path / "stored")]
    loss_b = [r["loss"] for r in log_steps(tmp_path / "online")]
    assert loss_b == pytest.approx(loss_a, rel=1e-9)
    assert online.metadata["settings"]["features"] == "online"



def test_cli_online_features_trains_on_an_ids_only_store(store_dir, tmp_path):
    from coral_bench.cli import main

    ids_only = ids_only_copy(store_dir, tmp_path / "ids")
    base = ["train", "--method", "eagle2", "--data", str(ids_only), "--dtype", "fp64", "--batch-tokens", "60",
            "--threads", "1"]
    refused = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "refused")])
    assert refused.exit_code != 0 and "--online-features" in refused.output and "Traceback" not in refused.output
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "online"), "--online-features"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "online" / "config.json").read_text())["coral_bench"]
    assert meta["settings"]["features"] == "online" and meta["budget"]["complete"] is True

def test_a_setting_added_later_resumes_at_its_default():
    """A checkpoint written before a setting existed made its run with that setting's default."""
    from coral_bench.train.state import settings_differences

    now = settings_for("coral", **SMALL)
    older = now.to_dict()
    del older["features"]
    assert settings_differences(older, now) == []
    assert settings_differences(older, settings_for("coral", features="online", **SMALL)) == [
        "features: 'stored' → 'online'"]



def test_a_truncated_shard_is_one_clear_error(store_dir, tmp_path):
    import shutil

    from coral_bench.train.store import StoreError

    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    shard = copy / FeatureStore(copy).manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    store = FeatureStore(copy)
    first_of_shard_1 = FeatureStore(copy).manifest["shards"][0]["sequences"]
    assert torch.equal(store[0].ids, FeatureStore(store_dir)[0].ids)  # shard 0 still reads
    with pytest.raises(StoreError, match=f"cannot read .*{shard.name}"):
        store[first_of_shard_1]

def test_cli_train(store_dir, tmp_path):
    from coral_bench.cli import main

    out = tmp_path / "cli"
    args = ["train", "--method", "coral", "--data", str(store_dir), "--out", str(out),  # target from the manifest
            "--dtype", "fp64", "--batch-tokens", "60", "--csra-weight", "0.2", "--csra-anchor", "step1-stopgrad",
            "--threads", "1"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "config.json").read_text())["coral_bench"]
    assert meta["loss"]["csra_weight"] == 0.2 and meta["loss"]["csra_anchor"] == "step1-stopgrad"
    assert meta["multistep"]["steps"] == 3 and meta["command"].startswith("coral-bench")
    # what every run that loads these weights records about them (the report's training section)
    summary = training_summary(meta)
    assert summary["method"] == "coral" and summary["steps"] == 3 and summary["epochs"] == 1
    assert summary["optimizer_steps"] >= 1 and summary["tokens"] > 0 and summary["complete"] is True
    assert len(summary["heldout_top1"]) == 3 and summary["loss"]["csra_anchor"] == "step1-stopgrad"
    bad = CliRunner().invoke(main, ["train", "--method", "eagle2", "--data", str(tmp_path / "none"), "--out",
                                    str(tmp_path / "x"), "--target", "tiny-random"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


# ---- distributed -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(store_dir, target64, tmp_path):
    """gloo DDP through Accelerate, unequal token counts per process, every method (+ in-batch CSRA
    negatives): the weights after a few optimizer steps equal a 1-process run with the same global
    batches (fp64)."""
    common = dict(dtype="fp64", batch_tokens=48, epochs=1, eval_fraction=0.2, feature_noise=0.05)
    runs = {
        "eagle2": settings_for("eagle2", **common),
        "hass": settings_for("hass", **common),
        "coral": settings_for("coral", **common),
        "coral-in-batch": settings_for("coral", csra_negatives="in-batch", csra_weight=0.5, **common),
    }
    data = TrainingData.open(store_dir, runs["coral"], 2, target64)
    assert data.plans == TrainingData.open(store_dir, runs["coral"], 1, target64).plans  # the same global batches
    lengths = data.lengths
    unequal = [sum(lengths[i] for i in shard(b, lengths, 0, 2)) != sum(lengths[i] for i in shard(b, lengths, 1, 2))
               for b in data.plans[0]]
    assert any(unequal) and len(data.plans[0]) >= 2
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps({k: v.to_dict() for k, v in runs.items()}))
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "ddp_worker.py"), str(store_dir),
                                       str(tmp_path / "ddp"), str(spec)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    for name, settings in runs.items():
        single = train(store_dir, tmp_path / "single" / name, settings, target64)
        two = final_state(tmp_path / "ddp" / name)
        one = final_state(tmp_path / "single" / name)
        assert two["position"] == {**one["position"], "wall_time_s": two["position"]["wall_time_s"]}
        assert single.optimizer_steps == len(data.plans[0])
        for key in one["model"]:
            torch.testing.assert_close(two["model"][key], one["model"][key], rtol=0, atol=1e-11, msg=f"{name} {key}")
        ddp_meta = json.loads((tmp_path / "ddp" / name / "config.json").read_text())["coral_bench"]
        assert ddp_meta["budget"]["processes"] == 2


@pytest.mark.parametrize("method,extra", [("hass", {}), ("coral", {}), ("eagle2", {"loss_vocab": 40})])
def test_the_chunked_vocabulary_loss_trains_as_the_unchunked_one(store_dir, target64, tmp_path, method, extra):
    """Blocks of 5 slots under activation checkpointing: the same losses, updates and held-out agreement."""
    runs = {}
    for rows in (0, 5):
        settings = settings_for(method, loss_chunk_rows=rows, **SMALL, **extra)
        result = train(store_dir, tmp_path / f"rows{rows}", settings, target64)
        runs[rows] = (result, final_state(tmp_path / f"rows{rows}"), log_steps(tmp_path / f"rows{rows}"))
    (a, state_a, log_a), (b, state_b, log_b) = runs[0], runs[5]
    assert a.optimizer_steps == b.optimizer_steps >= 5
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], rel=1e-10, abs=1e-12)
    for key in state_a["model"]:
        torch.testing.assert_close(state_a["model"][key], state_b["model"][key], rtol=1e-9, atol=1e-11)
    assert a.eval.accuracy == b.eval.accuracy
