"""Training that fits an 8B target: stored-feature training loads only the target's embedding and LM
head (the layers stay on the meta device), a store opens without reading a feature row, and the
memory estimate adds up."""

from __future__ import annotations

import pytest
import torch

from coral_bench.run.targets import EMBEDDED, load_target
from coral_bench.train.frozen_parts import load_frozen_parts, training_memory
from coral_bench.train.loop import Frozen
from coral_bench.train.store import FeatureStore
from coral_bench.train.training_data import TrainingData
from coral_bench.train.settings import settings_for
from test_train import store_dir  # noqa: F401, F811  (a fixture)


@pytest.mark.slow
def test_the_embedded_targets_frozen_parts_equal_the_whole_target():
    whole = load_target(EMBEDDED, dtype="float32", device="cpu").target
    parts = load_frozen_parts(EMBEDDED, torch.float32, "cpu")
    assert torch.equal(parts.embedding_weight(), whole.embedding_weight())
    assert torch.equal(parts.lm_head_weight(), whole.lm_head_weight())
    assert parts.lm_head_weight() is parts.embedding_weight()  # SmolLM2 ties them, and so do the parts
    assert parts.model.model.layers[0].mlp.down_proj.weight.device.type == "meta"
    assert (parts.vocab_size, parts.hidden_size, parts.max_context, parts.eos_token_ids) == \
        (whole.vocab_size, whole.hidden_size, whole.max_context, whole.eos_token_ids)
    features = torch.randn(5, whole.hidden_size, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([1, 5, 9])
    a, b = Frozen(whole, torch.float32), Frozen(parts, torch.float32)
    assert torch.equal(a.target_logp(features), b.target_logp(features)) and torch.equal(a.embed(ids), b.embed(ids))
    resident = training_memory(parts, 0, 1, 1, 1).frozen
    assert resident == whole.embedding_weight().numel() * 4  # one tied matrix, nothing else materialised
    assert resident < 0.3 * sum(p.numel() * 4 for p in whole.model.parameters())
    with pytest.raises(NotImplementedError, match="meta tensor"):
        parts.prefill(ids)  # the layers are not there: a forward fails rather than computing garbage


def test_opening_a_store_reads_no_feature(store_dir, target64, monkeypatch):  # noqa: F811
    def no_features(self, item):
        raise AssertionError("a feature row was read while opening the store")

    monkeypatch.setattr(FeatureStore, "__getitem__", no_features)
    data = TrainingData.open(store_dir, settings_for("eagle2", epochs=1), 1, target64)
    assert data.train and len(data.lengths) == len(FeatureStore(store_dir))


def test_the_memory_estimate_adds_up(target64):
    estimate = training_memory(target64, drafter_parameters=1000, batch_tokens=64, loss_vocab=0, steps=3)
    assert estimate.drafter == 16_000 and estimate.logits == 64 * target64.vocab_size * 16 * 3
    assert estimate.total == estimate.frozen + estimate.drafter + estimate.logits
    assert estimate.frozen == sum(p.numel() * p.element_size() for p in target64.model.parameters())
