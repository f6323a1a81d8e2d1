"""Drafter training: ``gen-data``, ``train`` and CORAL's router stage ``train-router`` (docs/methods.md §6)."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from coral_bench.run.progress import progress_bar
from .common import _fail, _quiet_transformers, err, out


@click.command("gen-data")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Store directory.")
@click.option("--target", default="smollm2-135m", show_default=True, help="Registry name, local model directory or cached HF id.")
@click.option("--sources", default="sharegpt,gsm8k", show_default=True,
              help="Comma-separated: sharegpt, gsm8k, or .jsonl/.json files (FastChat turns or ShareGPT conversations).")
@click.option("--max-prompts", type=int, help="Stop after N prompts (default: every prompt that passes the filters); "
              "with --from-ids: the source's first N sequences.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Per response.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--max-batch-tokens", type=int, default=1 << 15, show_default=True, help="Padded prompt tokens per batch.")
@click.option("--max-prompt-tokens", type=int, default=1024, show_default=True, help="Longer prompts are dropped.")
@click.option("--turns", type=int, default=1, show_default=True,
              help="User turns per conversation; answers to later turns are generated after the target's own.")
@click.option("--responses", type=click.Choice(["generate", "dataset"]), default="generate", show_default=True,
              help="generate: the target answers (self-distillation); dataset: the data's own answers, teacher-forced.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy.")
@click.option("--capture", type=click.Choice(["generate", "forward"]), default="generate", show_default=True,
              help="Features from generate's hidden states, or from a teacher-forced forward (less memory).")
@click.option("--store-dtype", type=click.Choice(["bfloat16", "float16", "float32", "float64"]), default="bfloat16",
              show_default=True, help="dtype of the stored features.")
@click.option("--shard-tokens", type=int, default=1 << 18, show_default=True, help="Tokens per shard (the unit of --resume).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]),
              help="Target dtype. Default: bfloat16 where the CPU runs it natively, else float32.")
@click.option("--device", help="cpu, cuda, … Default: the accelerator if any, else cpu.")
@click.option("--threads", type=int, help="torch threads (recorded). Default: torch's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Prompt shuffle and sampling.")
@click.option("--resume", is_flag=True, help="Continue the store in --out after its last complete shard.")
@click.option("--ids-only", is_flag=True, help="Store ids and loss masks without features (small enough to commit).")
@click.option("--time-limit", type=float, metavar="SECONDS",
              help="Start no new batch after this much time; close the store with the prompts done so far "
                   "(a random subset; recorded in the manifest).")
@click.option("--from-ids", "from_ids", type=click.Path(file_okay=False, path_type=Path),
              help="Recompute features for the ids of this store by a teacher-forced forward (with --ids-only: export its ids).")
def gen_data(out, target, sources, max_prompts, max_new_tokens, batch_size, max_batch_tokens, max_prompt_tokens, turns,
             responses, temperature, capture, store_dtype, shard_tokens, dtype, device, threads, seed, resume, ids_only,
             time_limit, from_ids):
    """Generate drafter training data from the target: ids, post-norm features and loss masks."""
    import time

    import torch

    from coral_bench.run.targets import load_target
    from coral_bench.train.gen_data import DataConfig, DataProgress, features_from_ids, generate_store

    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be >= 1", param_hint="--threads")
        torch.set_num_threads(threads)
    config = None
    if from_ids is None:  # validate everything before loading a model
        config = DataConfig(sources=sources, max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, max_batch_tokens=max_batch_tokens, max_prompt_tokens=max_prompt_tokens,
                            turns=turns, responses=responses, temperature=temperature, seed=seed, capture=capture,
                            ids_only=ids_only, store_dtype=store_dtype, shard_tokens=shard_tokens)
    loaded = load_target(target, dtype, device)
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    start = time.perf_counter()
    with progress_bar(*columns, console=err) as bar:
        task = bar.add_task(f"{out.name}: selecting prompts", total=None, rate="")

        def progress(p: DataProgress) -> None:
            rate = f"{p.tokens / p.elapsed:,.0f} response tok/s" if p.elapsed > 0 else ""
            bar.update(task, completed=p.done, total=p.total, rate=rate, description=f"{out.name} ({p.shards} shards)")

        if from_ids is not None:
            manifest = features_from_ids(loaded, from_ids, out, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                         store_dtype=store_dtype, ids_only=ids_only, shard_tokens=shard_tokens,
                                         resume=resume, command=command, progress=progress,
                                         max_sequences=max_prompts)
        else:
            manifest = generate_store(loaded, config, out, resume=resume, command=command, progress=progress,
                                      time_limit_s=time_limit)
    counts, stats, prompts = manifest["counts"], manifest.get("stats", {}), manifest.get("prompts") or {}
    table = Table(title=f"{out} · {loaded.name} · {loaded.dtype} · {torch.get_num_threads()} threads")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    table.add_row("sequences", f"{counts['sequences']:,}")
    table.add_row("tokens (prompt + response)", f"{counts['tokens']:,}")
    table.add_row("response tokens (in the loss)", f"{counts['loss_tokens']:,}")
    if counts["sequences"]:
        table.add_row("hit max-new-tokens", f"{stats.get('hit_max_new_tokens', 0) / counts['sequences']:.1%}")
    table.add_row("dropped: overlap with evaluation", str(prompts.get("dropped_overlap", "–")))
    table.add_row("dropped: prompt too long", str(prompts.get("dropped_too_long", "–")))
    table.add_row("store wall time (all sessions)", f"{manifest.get('wall_s', 0):,.0f} s")
    table.add_row("this session", f"{time.perf_counter() - start:,.0f} s")
    if stats.get("generated_tokens_per_s") and from_ids is None:
        table.add_row("generated tokens/s (all sessions)", f"{stats['generated_tokens_per_s']:,.1f}")
    out_console = Console()
    out_console.print(table)


@click.command()
@click.option("--method", required=True, type=click.Choice(["eagle2", "hass", "coral"]), help="Training objective.")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="Feature store directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint directory (EAGLE-format drafter, train-log.jsonl, training-state/).")
@click.option("--target", help="Target the store was built with. Default: the one its manifest names.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Peak learning rate (AdamW, β = 0.9, 0.95).")
@click.option("--warmup-steps", type=int, help="Default: 5% of the optimizer steps.")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine", show_default=True)
@click.option("--batch-tokens", type=int, default=2048, show_default=True,
              help="Global batch: sequences × longest slot count ≤ this (length-bucketed).")
@click.option("--steps", type=int, help="Unroll steps n (default 1 for eagle2, 3 otherwise).")
@click.option("--history", type=click.Choice(["keep-real", "exclude"]), default="keep-real", show_default=True,
              help="Slots t < j − 1 at step j: keep the real feature (HASS) or drop them from the loss.")
@click.option("--csra-temperature", type=float, default=0.07, show_default=True, help="τ_c.")
@click.option("--csra-weight", type=float, help="λ (default 0.1 for coral, 0 otherwise).")
@click.option("--csra-negatives", type=click.Choice(["same-sequence", "in-batch"]), default="same-sequence",
              show_default=True)
@click.option("--csra-anchor", type=click.Choice(["symmetric", "step1-stopgrad"]), default="symmetric",
              show_default=True)
@click.option("--distill-k", type=int, default=10, show_default=True, help="HASS top-K distillation K.")
@click.option("--distill-weight", type=float, help="Default 1.0 for hass/coral, 0 for eagle2.")
@click.option("--step-decay", type=float, default=1.0, show_default=True, help="Step j weighs decay^(j−1).")
@click.option("--loss-vocab", type=int, default=0, show_default=True, metavar="N",
              help="Soft CE / top-K over the N most frequent training tokens only (renormalised; a CPU "
                   "speed lever, recorded as a deviation). 0: the full vocabulary.")
@click.option("--feature-noise", type=float, default=0.05, show_default=True,
              help="Uniform noise U(−a, a)·RMS(f_t) on input features.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Initialisation, data order, feature noise and (unless --split-seed) the held-out split.")
@click.option("--split-seed", type=int, help="Seed of the held-out split only (default: --seed); keep it fixed to "
                                             "compare seeds on the same held-out sequences and training subset.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp64"]),
              help="bf16 = fp32 weights + bf16 autocast. Default: bf16 where the device runs it natively (avx512_bf16/AMX CPU, bf16 GPU), else fp32.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Optimizer steps (0: end only).")
@click.option("--resume", is_flag=True, help="Continue from --out's training state.")
@click.option("--time-limit", type=float, metavar="SECONDS",
              help="Stop cleanly after this much training time: state and drafter so far are saved "
                   "(marked incomplete); --resume continues.")
@click.option("--eval-fraction", type=float, default=0.02, show_default=True, help="Held-out sequences.")
@click.option("--max-sequences", type=click.IntRange(min=1), metavar="N",
              help="Train on the first N training sequences only (sweeps on a shorter budget; the held-out "
                   "split and --loss-vocab's token counts stay those of the whole store). Default: all.")
@click.option("--loss-chunk-rows", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Compute the soft CE / top-K losses N slots at a time (activation checkpointing), never all slots' "
                   "full-vocabulary logits at once: for large vocabularies (an 8B target's 128k). 0: off.")
@click.option("--online-features", "online", is_flag=True,
              help="Compute each batch's features with the target (a teacher-forced forward per step) instead of "
                   "reading the store's: for feature caches that would not fit on disk. The store may be ids-only "
                   "(gen-data --ids-only). Costs one target forward per batch.")
@click.option("--device", help="cpu, cuda… Default: Accelerate's device for this process.")
@click.option("--threads", type=int, help="torch threads (recorded). Default: torch's.")
def train(method, data, out, target, epochs, lr, warmup_steps, schedule, batch_tokens, steps, history,
          csra_temperature, csra_weight, csra_negatives, csra_anchor, distill_k, distill_weight, step_decay,
          loss_vocab, feature_noise, seed, split_seed, dtype, checkpoint_every, resume, time_limit, eval_fraction,
          max_sequences, loss_chunk_rows, online, device, threads):
    """Train an EAGLE-2 / HASS / CORAL drafter on a feature store (single process or `accelerate launch`)."""
    import torch
    from accelerate import PartialState

    from coral_bench.run.devices import cpu_has_native_bf16
    from coral_bench.run.targets import load_target
    from ..train.frozen_parts import load_frozen_parts, training_memory
    from ..train.loop import drafter_config, train as run_training
    from ..train.reporting import RichReporter
    from ..train.settings import settings_for
    from ..train.store import read_manifest

    if threads:
        torch.set_num_threads(threads)
    manifest = read_manifest(data)
    named = manifest.get("target")
    named = named.get("name") if isinstance(named, dict) else named
    target = target or named
    if not target:
        _fail(f"{data}: the store's manifest names no target; pass --target")
    loss = {k: v for k, v in dict(csra_weight=csra_weight, distill_weight=distill_weight).items() if v is not None}
    if dtype is None:  # bf16 autocast wherever the device runs it natively: avx512_bf16/AMX CPUs, Ampere+ GPUs
        kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
        native = cpu_has_native_bf16() if kind == "cpu" else kind == "cuda" and torch.cuda.is_bf16_supported()
        dtype = "bf16" if native else "fp32"
    settings = settings_for(
        method, steps=steps, epochs=epochs, lr=lr, warmup_steps=warmup_steps, schedule=schedule,
        batch_tokens=batch_tokens, history=history, csra_temperature=csra_temperature, csra_negatives=csra_negatives,
        csra_anchor=csra_anchor, distill_k=distill_k, step_decay=step_decay, feature_noise=feature_noise, seed=seed,
        dtype=dtype, checkpoint_every=checkpoint_every, eval_fraction=eval_fraction, loss_vocab=loss_vocab,
        max_sequences=max_sequences, split_seed=split_seed, features="online" if online else "stored",
        loss_chunk_rows=loss_chunk_rows, **loss)
    state = PartialState(cpu=device == "cpu")
    dev = device or str(state.device)
    frozen_dtype = torch.float64 if dtype == "fp64" else torch.float32
    if online:  # the target's layers compute the features
        frozen = load_target(target, dtype=str(frozen_dtype).removeprefix("torch."), device=dev).target
    else:  # stored features: the embedding and LM head are all training reads
        frozen = load_frozen_parts(target, frozen_dtype, dev)
    if state.is_main_process:
        estimate = training_memory(frozen, sum(math.prod(s) for s in drafter_config(frozen).param_shapes().values()),
                                   settings.loss_chunk_rows or settings.batch_tokens, settings.loss_vocab, settings.steps)
        err.print(f"memory per process {estimate.describe()}")
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    result = run_training(data, out, settings, frozen, resume=resume, reporter=RichReporter(err),
                          target_name=target, command=command, time_limit_s=time_limit)
    if state.is_main_process:
        partial = "" if result.metadata["budget"]["complete"] else "; stopped by --time-limit, --resume continues"
        err.print(f"drafter: {result.out} ({result.optimizer_steps} optimizer steps, {result.tokens:,} tokens, "
                  f"{result.wall_time_s:.0f} s{partial})")
        if result.eval is not None:
            acc = ", ".join(f"{a:.3f}" for a in result.eval.accuracy)
            err.print(f"held-out top-1 agreement by depth: {acc}")


# ---- CORAL's LM-head router, stage 2 (docs/methods.md §6) ---------------------------------------


@click.command("train-router")
@click.option("--drafter", "drafter", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The stage-1 drafter checkpoint (frozen).")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="Feature store directory.")
@click.option("--router-groups", type=int, required=True, help="N: vocabulary groups.")
@click.option("--router-k", type=int, required=True, help="Groups per tree node at inference (recorded default).")
@click.option("--partition", type=click.Choice(["contiguous", "frequency", "cluster"]), default="contiguous",
              show_default=True, help="Token-id ranges, training frequency ranks, or balanced k-means of head rows.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Routed drafter (EAGLE layout + router.* tensors + router-log.jsonl).")
@click.option("--label", type=click.Choice(["mass", "argmax"]), default="mass", show_default=True,
              help="Target probability mass per group (soft CE) or the group of the target's argmax.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW, warmup + cosine).")
@click.option("--steps", type=int, default=3, show_default=True, help="Unroll depth: router examples at depths 1…steps.")
@click.option("--batch-tokens", type=int, default=2048, show_default=True)
@click.option("--eval-fraction", type=float, default=0.05, show_default=True, help="Held-out sequences (recall).")
@click.option("--recall-top-k", type=int, default=4, show_default=True,
              help="Recall of the drafter's own top-k tokens (the tree's top_k).")
@click.option("--score", type=click.Choice(["renorm", "calibrated"]), default="renorm", show_default=True,
              help="Draft scores recorded as the checkpoint's default (@score= overrides at run time).")
@click.option("--target", help="Target the store was built with. Default: the one its manifest names.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp64"]), default="fp32", show_default=True)
@click.option("--max-sequences", type=click.IntRange(min=1), metavar="N",
              help="Train on the first N training sequences only (labels need the full head per slot and depth; "
                   "the held-out split is unchanged). Default: all.")
@click.option("--threads", type=int, help="torch threads (recorded). Default: torch's.")
@click.option("--device", help="cpu, cuda… Default: the accelerator if any, else cpu.")
def train_router_command(drafter, data, router_groups, router_k, partition, out_dir, label, epochs, lr, steps,
                         batch_tokens, eval_fraction, recall_top_k, score, target, seed, dtype, max_sequences, threads,
                         device):
    """Train CORAL's LM-head router on a frozen stage-1 drafter (two-stage protocol, docs/methods.md §6)."""
    import torch

    from ..train.frozen_parts import load_frozen_parts
    from ..train.router_loop import RouterSettings, train_router
    from ..train.store import read_manifest

    if threads:
        torch.set_num_threads(threads)
    named = read_manifest(data).get("target")
    named = named.get("name") if isinstance(named, dict) else named
    target = target or named
    if not target:
        _fail(f"{data}: the store's manifest names no target; pass --target")
    settings = RouterSettings(groups=router_groups, k=router_k, partition=partition, label=label, epochs=epochs,
                              lr=lr, steps=steps, batch_tokens=batch_tokens, eval_fraction=eval_fraction,
                              recall_top_k=recall_top_k, score=score, seed=seed, dtype=dtype,
                              max_sequences=max_sequences)
    _quiet_transformers()
    # stored features: the router reads the drafter's outputs and the target's head, never its layers
    frozen = load_frozen_parts(target, torch.float64 if dtype == "fp64" else torch.float32, device)
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    with progress_bar(TextColumn("router"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err) as bar:
        task = bar.add_task("router", total=None, info="")

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.4g}")

        result = train_router(drafter, data, out_dir, settings, frozen, progress=progress, target_name=target,
                              command=command)
    g = result.grouping
    err.print(f"routed drafter: {result.out} ({result.optimizer_steps} steps, {result.rows:,} router examples, "
              f"{result.wall_time_s:.0f} s) · {g['rule']} groups: {g['groups']} of {g['min_group_size']}–"
              f"{g['max_group_size']} tokens · permuted head copy at load {result.head_copy_bytes / 2**20:.1f} MiB "
              f"(in the training dtype; 0 for contiguous)")
    if result.eval is None:
        err.print("[yellow]no held-out sequences: recall not measured (raise --eval-fraction)[/yellow]")
        return
    table = Table(title=f"held-out recall by depth (router k; drafter top-{recall_top_k}; target mass in the groups)")
    for col in ("k", *(f"argmax d{j}" for j in range(1, steps + 1)), *(f"top-{recall_top_k} d{j}" for j in
                                                                      range(1, steps + 1)),
                *(f"mass d{j}" for j in range(1, steps + 1))):
        table.add_column(col, justify="right")
    for r in result.eval.recall:
        table.add_row(str(r.k), *(f"{v:.3f}" for v in (*r.target_argmax, *r.drafter_top, *r.mass)))
    out.print(table)
