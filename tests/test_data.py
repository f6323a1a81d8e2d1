"""Training data: prompt sources, decontamination, masks, stored features, resume, ids-only, online.

Tiny float64 targets and the byte-level tiny tokenizer: every check is exact up to float64 rounding.
"""

import collections
import json
import re

import pytest
import torch
from click.testing import CliRunner

from coral_bench.run.chat import render
from coral_bench.run.targets import LoadedTarget
from coral_bench.run.suites import load_suite
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model
from coral_bench.train import prompts as P
from coral_bench.train.gen_data import (DataConfig, DataError, features_from_ids, generate_store, plan_batches,
                                    select_prompts, window_sorted)
from coral_bench.train.online import OnlineFeatures
from coral_bench.train.target_passes import conversation_mask, generate_batch, response_length, teacher_forced
from coral_bench.train.overlap import OverlapIndex, words
from coral_bench.train.store import FeatureStore

EOS = 2


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eos_model(tokenizer):
    """A tiny float64 target that ends its answers at varied lengths: its EOS logit is set just above
    that of the token it generates most often, so greedy answers end early, late, or not at all."""
    base = tiny_model(seed=0, dtype=torch.float64, tie_word_embeddings=False)
    prompts = [render(tokenizer, [q], [], None) for q in QUESTIONS]
    gens = generate_batch(Target(base, (EOS,), "probe"), prompts, 16, features=False)
    common = collections.Counter(t for g in gens for t in g.ids[g.prompt_len:].tolist()).most_common(1)[0][0]
    with torch.no_grad():
        base.lm_head.weight[EOS] = 1.05 * base.lm_head.weight[common]
    return base


@pytest.fixture
def loaded(eos_model, tokenizer):
    return LoadedTarget(Target(eos_model, (EOS,), "tiny-eos"), tokenizer, "tiny-eos", "test", "float64", "test", "cpu")


@pytest.fixture(scope="module")
def index():
    return OverlapIndex.from_suites()


QUESTIONS = ["What is 2+2?", "Tell me a story about a cat.", "hi", "Explain gravity in simple words please.",
             "Write a poem", "Why is the sky blue?", "Name a colour.", "Sum 3 and 4, then explain."]


@pytest.fixture
def qfile(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "turns": [q, f"Now say it again, {i}."]}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    return path


def _config(qfile, **kw):
    settings = dict(sources=str(qfile), max_new_tokens=12, batch_size=3, store_dtype="float64", shard_tokens=400)
    settings.update(kw)
    return DataConfig(**settings)


def _sequences(path):
    store = FeatureStore(path)
    return [store[i] for i in range(len(store))]


# ---- prompt sources ----------------------------------------------------------------------------
def _conv(*pairs):
    return [{"from": role, "value": text} for role, text in pairs]


def test_sharegpt_array_parses_robustly_and_survives_truncation(tmp_path):
    records = [
        {"id": "ok", "conversations": _conv(("human", "Hello"), ("gpt", "Hi!"), ("human", "More"), ("gpt", "Sure"))},
        {"id": "lead", "conversations": _conv(("gpt", "I start"), ("human", "Q1"), ("chatgpt", "A1"))},
        {"id": "sys", "conversations": _conv(("system", "Be terse."), ("user", "Q"), ("assistant", "A"))},
        {"id": "midsys", "conversations": _conv(("human", "Q"), ("gpt", "A"), ("system", "x"), ("human", "Q2"))},
        {"id": "bing", "conversations": _conv(("human", "Q"), ("bing", "A"), ("human", "Q2"))},
        {"id": "double", "conversations": _conv(("human", "Q"), ("human", "Q again"), ("gpt", "A"))},
        {"id": "empty", "conversations": _conv(("human", "  "), ("gpt", "A"))},
        {"id": "only-gpt", "conversations": _conv(("gpt", "A"))},
        {"id": "bad-message", "conversations": ["not a dict", {"from": "human", "value": "Q"}]},
        {"id": "no-conv"},
        "not an object",
        {"id": "cut-value", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": 7}]},
    ]
    text = json.dumps(records, indent=2)
    tail = json.dumps({"id": "tail", "conversations": _conv(("human", "Q"), ("gpt", "A long answer"))})
    path = tmp_path / "sharegpt.json"
    path.write_text(text[:-1].rstrip() + ",\n" + tail[: len(tail) // 2])  # the export ends mid-record
    load = P.read_conversation_array(path, "sharegpt")
    by_id = {p.id: p for p in load.prompts}
    assert load.truncated and load.records == len(records)
    assert set(by_id) == {"ok", "lead", "sys", "midsys", "bing", "double", "cut-value"}
    assert load.skipped == 5  # empty, only-gpt, bad-message, no-conv, not an object
    assert by_id["ok"].turns == ("Hello", "More") and by_id["ok"].responses == ("Hi!", "Sure")
    assert by_id["lead"].turns == ("Q1",) and by_id["lead"].responses == ("A1",)  # starts at a user turn
    assert by_id["sys"].system == "Be terse." and by_id["sys"].responses == ("A",)
    assert by_id["midsys"].system is None and by_id["midsys"].turns == ("Q",)  # system only if first: cut
    assert by_id["bing"].turns == ("Q",) and by_id["bing"].responses == ()  # unknown role: cut
    assert by_id["double"].turns == ("Q",)  # alternation broken: cut on the turn boundary
    assert by_id["cut-value"].responses == ()
    # a file that ends between records (no closing bracket) is truncated too; a complete one is not
    path.write_text(text[:-1].rstrip() + ",\n")
    assert P.read_conversation_array(path, "x").truncated
    path.write_text(text)
    assert not P.read_conversation_array(path, "x").truncated


def test_roles_map_and_turns_cut_on_boundaries():
    system, turns, answers = P.parse_conversation([
        {"role": "User", "content": "a"}, {"role": "assistant", "content": "b"},
        {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}, {"from": "user", "value": "e"}])
    assert (system, turns, answers) == (None, ("a", "c", "e"), ("b", "d"))
    assert P.parse_conversation([{"from": "gpt", "value": "x"}]) is None
    assert P.parse_conversation("nope") is None
    prompt = P.Prompt("s", "1", ("a", "c", "e"), ("b", "d"))
    assert prompt.first(1) == P.Prompt("s", "1", ("a",), ("b",))
    assert prompt.first(2).turns == ("a", "c") and prompt.first(2).responses == ("b", "d")
    with pytest.raises(P.PromptError):
        P.Prompt("s", "1", ("",))


def test_user_jsonl_formats_malformed_lines_and_truncation(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps({"question_id": 7, "turns": ["Q1", "Q2"]}),
             "{not json",
             json.dumps({"conversations": _conv(("human", "H"), ("gpt", "G"))}),
             json.dumps({"id": "m", "messages": [{"role": "user", "content": "U"}]}),
             json.dumps({"turns": []}),
             json.dumps({"question_id": 9, "turns": ["cut sh"]})[:20]]
    path.write_text("\n".join(lines))
    load = P.load_source(str(path))
    assert [(p.id, p.turns) for p in load.prompts] == [("7", ("Q1", "Q2")), ("3", ("H",)), ("m", ("U",))]
    assert load.prompts[1].responses == ("G",)
    assert load.skipped == 2 and load.truncated
    with pytest.raises(P.PromptError, match="not found"):
        P.load_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(P.PromptError, match="unknown prompt source"):
        P.parse_sources("sharegpt,nope")
    (tmp_path / "bad.jsonl").write_text("[1]\n{}\n")
    with pytest.raises(P.PromptError, match="no usable prompts"):
        P.load_source(str(tmp_path / "bad.jsonl"))


def test_gsm8k_train_and_the_sharegpt_package():
    load = P.read_gsm8k()
    assert len(load.prompts) == 7473 and load.skipped == 0
    first = load.prompts[0]
    assert first.turns[0].startswith("Natalia sold clips") and "<<" not in first.responses[0]
    assert first.responses[0].endswith("#### 72") and "48/2 = 24 clips" in first.responses[0]
    assert P.sharegpt_path().name == P.SHAREGPT_FILE  # located without importing the package


def test_shuffle_is_seeded_and_mixes_sources():
    a = P.SourceLoad("a", tuple(P.Prompt("a", str(i), (f"q{i}",)) for i in range(50)), 50, 0, False, "")
    b = P.SourceLoad("b", tuple(P.Prompt("b", str(i), (f"r{i}", "x"), ("y",)) for i in range(50)), 50, 0, False, "")
    one, two = P.shuffled([a, b], seed=1), P.shuffled([a, b], seed=1)
    assert one == two and one != P.shuffled([a, b], seed=2)
    assert {p.source for p in one[:20]} == {"a", "b"}
    assert all(len(p.turns) == 1 for p in one)  # cut to the first user turn by default


# ---- decontamination ---------------------------------------------------------------------------
def test_overlap_filter_drops_planted_prompts(index):
    mt = load_suite("mtbench").questions[0].turns[0]
    planted = "Please help. " + " ".join(words(mt)[2:16]).upper() + "!! Thanks."
    assert index.match(planted) is not None
    assert index.overlaps(P.Prompt("x", "1", ("fine", planted)))  # any user turn counts
    short = "Write a C++ program to find the nth Fibonacci number using recursion."  # 12 words, MT-bench
    assert index.overlaps(P.Prompt("x", "2", (f"hey: {short.lower()} now",)))
    assert not index.overlaps(P.Prompt("x", "3", ("Tell me about the history of the bicycle in Europe.",)))
    assert words("It's 3:00—ok?_Yes") == ["it", "s", "3", "00", "ok", "yes"]


def test_selection_counts_overlap_drops(loaded, index, tmp_path):
    mt = load_suite("gsm8k-full").questions[5].turns[0]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question_id": "leak", "turns": [mt]}) + "\n"
                    + json.dumps({"question_id": "clean", "turns": ["How do tides work?"]}) + "\n")
    sel = select_prompts(loaded, DataConfig(sources=str(path)), index)
    assert [p.id for p in sel.prompts] == ["clean"] and sel.report["dropped_overlap"] == 1


def _ngram_strings(text, n=13):
    tokens = re.sub(r"[\W_]+", " ", text.lower()).split()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def test_no_default_training_prompt_overlaps_an_evaluation_question(index):
    """The full default pool (ShareGPT first turns + GSM8K train), filtered, checked against every
    turn of mtbench, humaneval-full, gsm8k-full and alpaca with an independent 13-gram set."""
    pool = P.shuffled(P.load_sources(P.parse_sources(P.DEFAULT_SOURCES)), seed=0)
    kept = [p for p in pool if not index.overlaps(p)]
    assert len(pool) > 20000 and 0 < len(pool) - len(kept) < 100
    evaluation = set()
    for name in ("mtbench", "humaneval-full", "gsm8k-full", "alpaca"):
        for q in load_suite(name).questions:
            for turn in q.turns:
                evaluation |= _ngram_strings(turn)
    assert len(evaluation) > 50000
    leaks = [p.key for p in kept for turn in p.turns if not _ngram_strings(turn).isdisjoint(evaluation)]
    assert leaks == []


# ---- masks and lengths -------------------------------------------------------------------------
def test_response_length_from_the_first_eos_when_pad_is_eos():
    assert response_length(torch.tensor([5, 6, EOS, EOS, EOS]), (EOS,)) == (3, False)  # pads after: same id
    assert response_length(torch.tensor([EOS, EOS]), (EOS,)) == (1, False)  # an immediate EOS is a response
    assert response_length(torch.tensor([5, 6, 7]), (EOS,)) == (3, True)  # hit max: all tokens kept


def test_conversation_mask_covers_every_answer_and_its_eos():
    r1 = [1, 10, 11, 1, 20]  # prompt of round 1 (ends with the generation prompt)
    r2 = r1 + [30, 31, EOS, 40, 1, 21, 1, 20]  # answer 1 = 30 31 EOS, then the template and turn 2
    mask = conversation_mask([r1, r2], [50, EOS], (EOS,))
    want = [0] * 5 + [1, 1, 1] + [0] * 5 + [1, 1]
    assert mask.tolist() == [bool(x) for x in want]
    assert conversation_mask([r1], [50, 51], (EOS,)).tolist() == [False] * 5 + [True, True]
    with pytest.raises(ValueError):
        conversation_mask([r1, [9] + r2[1:]], [EOS], (EOS,))  # not an extension of round 1


def test_batches_are_planned_by_rows_and_padded_tokens():
    assert plan_batches([5, 5, 5, 5, 5], 2, 1000) == [(0, 2), (2, 4), (4, 5)]
    assert plan_batches([10, 10, 30, 30], 4, 60) == [(0, 2), (2, 4)]  # 3 × 30 > 60
    assert plan_batches([100], 4, 10) == [(0, 1)]  # a lone long row still runs
    assert window_sorted([3, 1, 2, 9, 8, 7], batch_size=1, window=3) == [1, 2, 0, 5, 4, 3]


# ---- generation and stored features ------------------------------------------------------------
@pytest.fixture
def store(loaded, qfile, index, tmp_path):
    out = tmp_path / "store"
    manifest = generate_store(loaded, _config(qfile), out, index=index)
    return out, manifest


def test_stored_sequences_are_unpadded_masked_and_equal_a_teacher_forced_forward(store, loaded, qfile, index):
    out, manifest = store
    seqs = _sequences(out)
    keys = (out / "prompts.txt").read_text().splitlines()
    sel = select_prompts(loaded, _config(qfile), index)
    assert keys == [p.key for p in sel.prompts] and len(seqs) == len(QUESTIONS)
    assert len(manifest["shards"]) > 1 and manifest["complete"]
    ends = collections.Counter()
    for seq, prompt in zip(seqs, sel.prompts):
        rendered = render(loaded.tokenizer, [prompt.turns[0]], [], None)
        n = len(rendered)
        assert seq.ids[:n].tolist() == rendered  # left padding never leaks: the sequence starts at BOS
        response = seq.ids[n:]
        assert seq.loss_mask.tolist() == [False] * n + [True] * len(response)
        eos_at = (response == EOS).nonzero().flatten().tolist()
        if eos_at:  # ended: exactly one EOS, the last token, in the loss
            assert eos_at == [len(response) - 1]
            ends["eos"] += 1
        else:
            assert len(response) == 12
            ends["max"] += 1
        ref = teacher_forced(loaded.target, [seq.ids])[0]
        assert seq.features.dtype == torch.float64
        torch.testing.assert_close(seq.features, ref, rtol=0, atol=1e-10)
    assert ends["eos"] >= 2 and ends["max"] >= 1, ends
    assert manifest["stats"]["hit_max_new_tokens"] == ends["max"]
    assert manifest["stats"]["generated_tokens"] == manifest["counts"]["loss_tokens"]
    for key in ("target", "chat_template_sha256", "prompts", "generation", "provenance", "wall_s"):
        assert key in manifest
    assert manifest["target"]["embedding_sha256"] and manifest["prompts"]["dropped_overlap"] == 0


def test_teacher_forced_capture_equals_generate_capture(store, loaded, qfile, index, tmp_path):
    out, _ = store
    generate_store(loaded, _config(qfile, capture="forward"), tmp_path / "fw", index=index)
    for a, b in zip(_sequences(out), _sequences(tmp_path / "fw")):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.loss_mask, b.loss_mask)
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-10)


def test_resume_after_an_interruption_gives_the_same_store(store, loaded, qfile, index, tmp_path):
    out, manifest = store
    part = tmp_path / "part"

    class Stop(Exception):
        pass

    def stop_after_two(p):
        if p.shards == 2:
            raise Stop

    with pytest.raises(Stop):
        generate_store(loaded, _config(qfile), part, progress=stop_after_two, index=index)
    assert len(FeatureStore(part).manifest["shards"]) == 2
    with pytest.raises(DataError, match="--resume"):
        generate_store(loaded, _config(qfile), part, index=index)
    with pytest.raises(DataError, match="differs"):
        generate_store(loaded, _config(qfile, max_new_tokens=11), part, resume=True, index=index)
    resumed = generate_store(loaded, _config(qfile), part, resume=True, index=index)
    assert resumed["sessions"] == 2 and resumed["counts"] == manifest["counts"]
    assert resumed["stats"]["hit_max_new_tokens"] == manifest["stats"]["hit_max_new_tokens"]
    assert resumed["shards"] == manifest["shards"]
    for shard in manifest["shards"]:
        assert (part / shard["file"]).read_bytes() == (out / shard["file"]).read_bytes()


def test_from_ids_can_take_the_first_sequences(store, loaded, tmp_path):
    out, manifest = store
    part = features_from_ids(loaded, out, tmp_path / "part", max_sequences=5, store_dtype="float64")
    assert part["counts"]["sequences"] == 5 and part["from_ids"]["first_sequences_of"] == len(QUESTIONS)
    assert part["from_ids"]["tokens"] == part["counts"]["tokens"] < manifest["counts"]["tokens"]
    assert (tmp_path / "part" / "prompts.txt").read_text().splitlines() == (out / "prompts.txt").read_text().splitlines()[:5]
    for a, b in zip(_sequences(tmp_path / "part"), _sequences(out)[:5]):
        assert torch.equal(a.ids, b.ids)
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-10)
    with pytest.raises(DataError, match="max-prompts"):
        features_from_ids(loaded, out, tmp_path / "none", max_sequences=0)


def test_time_limit_closes_a_complete_store_with_a_prefix_of_the_batches(store, loaded, qfile, index, tmp_path):
    out, manifest = store
    cut = generate_store(loaded, _config(qfile), tmp_path / "cut", index=index, time_limit_s=0.0)
    assert cut["complete"] and cut["cut_by_time_limit"]["batches_done"] == 1
    n = cut["counts"]["sequences"]
    assert 0 < n < manifest["counts"]["sequences"]
    for a, b in zip(_sequences(tmp_path / "cut"), _sequences(out)[:n]):  # the same first batch
        assert torch.equal(a.ids, b.ids) and torch.equal(a.loss_mask, b.loss_mask)


def test_ids_only_then_from_ids_and_online_features_equal_the_store(store, loaded, qfile, index, tmp_path):
    out, _ = store
    ids = tmp_path / "ids"
    m = generate_store(loaded, _config(qfile, ids_only=True), ids, index=index)
    assert m["features"] is None
    stored = _sequences(out)
    for a, b in zip(stored, _sequences(ids)):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.loss_mask, b.loss_mask) and b.features.shape[1] == 0
    online = OnlineFeatures(loaded.target, ids)
    online.prefetch(range(3))
    for i, a in enumerate(stored):
        b = online[i]
        assert torch.equal(a.ids, b.ids) and torch.equal(a.loss_mask, b.loss_mask)
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-10)
    layer = torch.nn.Linear(a.features.shape[1], 1, dtype=torch.float64)  # usable by a trainer: not an
    layer(online[0].features).sum().backward()  # inference-mode tensor, which autograd refuses to save
    redone = tmp_path / "redone"
    r = features_from_ids(loaded, ids, redone, batch_size=2, store_dtype="float64", shard_tokens=500)
    assert r["complete"] and r["counts"] == FeatureStore(out).manifest["counts"]
    assert (redone / "prompts.txt").read_text() == (out / "prompts.txt").read_text()
    for a, b in zip(stored, _sequences(redone)):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.loss_mask, b.loss_mask)
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-10)
    other = LoadedTarget(Target(tiny_model(seed=3, dtype=torch.float64), (EOS,), "x"), loaded.tokenizer, "other",
                         "test", "float64", "test", "cpu")
    with pytest.raises(DataError, match="another target"):
        features_from_ids(other, ids, tmp_path / "nope")


def test_later_turns_are_answered_by_the_target_after_its_own_answers(loaded, qfile, index, tmp_path):
    out = tmp_path / "two"
    generate_store(loaded, _config(qfile, turns=2), out, index=index)
    sel = select_prompts(loaded, _config(qfile, turns=2), index)
    tok = loaded.tokenizer
    two_rounds = 0
    for seq, prompt in zip(_sequences(out), sel.prompts):
        first = render(tok, [prompt.turns[0]], [], None)
        ids = seq.ids.tolist()
        assert ids[: len(first)] == first
        after = ids[len(first) :]
        end = after.index(EOS) if EOS in after else None
        if end is None or end + 1 == len(after):  # one round: turn 1 hit max or ended the sequence
            assert seq.loss_mask.tolist() == [False] * len(first) + [True] * len(after)
            continue
        two_rounds += 1
        answer = tok.decode(after[:end], skip_special_tokens=True)
        second = render(tok, list(prompt.turns[:2]), [answer], None)
        assert ids[: len(second)] == second  # re-rendered, as evaluation renders MT-bench turn 2
        mask = seq.loss_mask.tolist()
        assert mask[len(first) : len(first) + end + 1] == [True] * (end + 1)  # answer 1 and its EOS
        assert not any(mask[len(first) + end + 1 : len(second)])  # the template and turn 2
        assert all(mask[len(second) :])
        torch.testing.assert_close(seq.features, teacher_forced(loaded.target, [seq.ids])[0], rtol=0, atol=1e-10)
    assert two_rounds >= 2


def test_fixed_responses_are_teacher_forced(loaded, index, tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps({"id": i, "conversations": _conv(("human", q), ("gpt", f"Answer {i}."))}) + "\n"
                            for i, q in enumerate(QUESTIONS[:4])) + json.dumps({"turns": ["no answer here"]}) + "\n")
    out = tmp_path / "fixed"
    m = generate_store(loaded, DataConfig(sources=str(path), responses="dataset", batch_size=2, store_dtype="float64"),
                       out, index=index)
    assert m["prompts"]["dropped_no_response"] == 1 and m["stats"]["generated_tokens"] == 0
    keys = (out / "prompts.txt").read_text().splitlines()
    tok = loaded.tokenizer
    for key, seq in zip(keys, _sequences(out)):
        i = int(key.rsplit(":", 1)[1])
        prompt = render(tok, [QUESTIONS[i]], [], None)
        answer = tok(f"Answer {i}.", add_special_tokens=False)["input_ids"] + [EOS]
        assert seq.ids.tolist() == prompt + answer
        assert seq.loss_mask.tolist() == [False] * len(prompt) + [True] * len(answer)
        torch.testing.assert_close(seq.features, teacher_forced(loaded.target, [seq.ids])[0], rtol=0, atol=1e-10)


def test_bad_settings_fail_with_one_line(qfile):
    with pytest.raises(DataError, match="batch-size"):
        DataConfig(batch_size=0)
    with pytest.raises(DataError, match="response mode"):
        DataConfig(responses="nope")
    with pytest.raises(ValueError, match="unknown prompt source"):
        DataConfig(sources="nope")


# ---- the command line --------------------------------------------------------------------------
def test_gen_data_cli(qfile, tmp_path):
    from coral_bench.cli import main

    out = tmp_path / "cli"
    args = ["gen-data", "--out", str(out), "--target", "tiny-random", "--dtype", "float64", "--threads", "1",
            "--sources", str(qfile), "--max-prompts", "4", "--max-new-tokens", "6", "--batch-size", "2"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["sequences"] == 4
    assert manifest["features"]["dtype"] == "bfloat16"
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 2 and "--resume" in again.output
    assert CliRunner().invoke(main, args + ["--resume"], catch_exceptions=False).exit_code == 0
    bad = CliRunner().invoke(main, ["gen-data", "--out", str(tmp_path / "x"), "--target", "tiny-random",
                                    "--sources", "nope"], catch_exceptions=False)
    assert bad.exit_code == 2 and "unknown prompt source" in bad.output


def test_sampling_is_seeded_per_batch(loaded, qfile, index, tmp_path):
    a = generate_store(loaded, _config(qfile, temperature=1.0, max_prompts=5), tmp_path / "a", index=index)
    generate_store(loaded, _config(qfile, temperature=1.0, max_prompts=5), tmp_path / "b", index=index)
    assert a["counts"]["sequences"] == 5 and a["generation"]["sampling"].startswith("temperature")
    for x, y in zip(_sequences(tmp_path / "a"), _sequences(tmp_path / "b")):
        assert torch.equal(x.ids, y.ids)
    greedy = _sequences(generate_store(loaded, _config(qfile, max_prompts=5), tmp_path / "g", index=index) and tmp_path / "g")
    assert any(not torch.equal(x.ids, y.ids) for x, y in zip(_sequences(tmp_path / "a"), greedy))
