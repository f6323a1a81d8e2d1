"""The ``coral-bench`` command line: parse, call library functions, print. Nothing else."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Model-related modules are imported inside the commands that need them: `--help`, `suites` and
# `report` stay fast (no torch / transformers import).

# Errors that are the user's input, not bugs: one line on stderr, exit status 2, no traceback. Every
# coral-bench error about input (SuiteError, LoadError, TargetError, DrafterError, TreeError,
# MethodError, PeerError, RunDirError, BusyMachineError, ...) subclasses ValueError.
USER_ERRORS = (ValueError, OSError)

out = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns user errors raised anywhere in a command into one clear line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@click.group(cls=_Group)
@click.version_option(package_name="coral-bench")
def main() -> None:
    """coral-bench: speculative decoding benchmarks and speedup analysis (EAGLE-2, HASS, CORAL)."""


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one that matters


def _tree(ctx, param, value):
    from .tree import TreeError, TreeShape

    if value is None or value == "auto":
        return value
    try:
        return TreeShape.parse(value)
    except TreeError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--suite", required=True, help="Suite name (see `coral-bench suites`) or a FastChat/Spec-Bench .jsonl file.")
@click.option("--target", default="smollm2-135m", show_default=True, help="Registry name, local model directory or cached HF id.")
@click.option("--drafter", "drafters", multiple=True, metavar="[LABEL=]NAME[:CKPT][@tree=SHAPE]",
              help="A drafter to compare with vanilla (repeatable).")
@click.option("--peer", "peers", multiple=True, help="A peer implementation (hf-vanilla always runs).")
@click.option("--tree", callback=_tree, help="Tree for every drafter: chain:N or top_k=K,depth=D,total_tokens=T; "
              "auto: EAGLE-style drafters get the grid tree with the best predicted speedup on this machine.")
@click.option("--limit", type=int, help="Only the first N questions.")
@click.option("--max-new-tokens", type=int, help="Default: the suite's (256).")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--sample-top-k", type=int, default=0, show_default=True, help="Sampling top-k (0: off).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]),
              help="Default: bfloat16 where the CPU runs it natively, else float32.")
@click.option("--device", help="cpu, cuda, cuda:1, mps… Default: the accelerator if any, else cpu.")
@click.option("--threads", type=int, help="torch threads (recorded). Default: torch's.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default runs/<suite>-<time>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--require-idle", is_flag=True, help="Refuse to time on a busy machine.")
def run(suite, target, drafters, peers, tree, limit, max_new_tokens, temperature, top_p, sample_top_k, seed, dtype,
        device, threads, out, resume, require_idle):
    """Run vanilla, each drafter and each peer over a suite and compare them."""
    from .bench import RunConfig, run_suite
    from .methods import DrafterSpec
    from .sampling import SamplingConfig
    from .suites import load_suite

    _quiet_transformers()

    if limit is not None and limit < 1:
        raise click.BadParameter("must be >= 1", param_hint="--limit")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-new-tokens")
    auto = None
    if tree == "auto":  # EAGLE-style drafters: the tree the cost model predicts fastest here (tree_auto)
        from .tree_auto import AutoSettings

        tree, auto = None, AutoSettings()
    if resume and out is None:
        raise click.BadParameter("--resume needs the --out of the run to continue", param_hint="--resume")
    config = RunConfig(suite=suite, target=target, drafters=tuple(DrafterSpec.parse(d) for d in drafters),
                       peers=tuple(peers), tree=tree, limit=limit, max_new_tokens=max_new_tokens,
                       sampling=SamplingConfig(temperature=temperature, top_p=top_p, top_k=sample_top_k, seed=seed),
                       dtype=dtype, device=device, threads=threads, require_idle=require_idle, tree_auto=auto)
    load_suite(suite)  # fail fast on a bad suite, before loading a model
    if out is None:
        stem = Path(suite).stem if suite.endswith(".jsonl") else suite
        out = Path("runs") / f"{stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done: int, total: int, method: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{Path(out).name} [{method}]")

        results = run_suite(config, out, resume=resume, command=command, progress=progress)
    _print_summary(results)
    out_path = out / "results.json"
    out.mkdir(exist_ok=True)
    err.print(f"results: {out_path}")


def _fmt(value, pattern="{:.2f}") -> str:
    return "–" if value is None else pattern.format(value)


def _equality(row: dict) -> str:
    """Identical samples, and in brackets identical or diverging only at numerical ties."""
    equal, with_ties = row.get("equal_to_vanilla"), row.get("equal_to_vanilla_except_ties")
    if equal is None:
        return "–"
    return f"{equal:.0%}" if with_ties == equal else f"{equal:.0%} ({with_ties:.0%} w/ ties)"


def _print_summary(results: dict) -> None:
    table = Table(title=f"{results['config']['suite']} · {results['config']['target']} · {results['config']['dtype']}")
    for col in ("method", "tokens/s", "τ pooled", "τ per q", "speedup [95% CI]", "equal to vanilla"):
        table.add_column(col, justify="right" if col != "method" else "left")
    base = results["baseline"]
    table.add_row("vanilla", _fmt(base["tokens_per_s"]), "1.00", "1.00", "1.00", "–")
    for group in ("drafters", "peers"):
        for name, row in results[group].items():
            if row.get("error"):
                table.add_row(name, "failed", "", "", row["error"][:40], "")
                continue
            ci = row.get("speedup_ci95")
            speed = _fmt(row.get("speedup")) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            table.add_row(name, _fmt(row["tokens_per_s"]), _fmt(row.get("tau_pooled")),
                          _fmt(row.get("tau_per_question")), speed, _equality(row))
    out.print(table)
    ratio = base.get("vanilla_over_hf_vanilla")
    if ratio is not None:
        out.print(f"vanilla / hf-vanilla tokens/s: {ratio:.3f} (goal ≥ 0.95; a slow vanilla inflates every speedup)")
    prov = results["provenance"]
    if prov.get("busy_machine"):
        err.print(f"[bold yellow]WARNING: the machine was busy ({prov['load_average_before']} → "
                  f"{prov['load_average_after']} cores busy with other work): timings are not trustworthy[/bold yellow]")


@main.command()
def suites() -> None:
    """List the shipped suites."""
    from .suites import load_suite, suite_names

    table = Table("suite", "questions", "turns", "max new tokens", "description")
    for name in suite_names():
        s = load_suite(name)
        table.add_row(name, str(len(s.questions)), str(max(len(q.turns) for q in s.questions)),
                      str(s.max_new_tokens), s.description)
    out.print(table)


@main.command()
def drafters() -> None:
    """List the registered drafters and their default trees."""
    from .drafters.registry import DRAFTERS
    from .peers import PEERS

    table = Table("drafter", "default tree", "needs checkpoint", "description")
    for name, entry in DRAFTERS.items():
        table.add_row(name, entry.default_tree.describe(), "yes" if entry.needs_checkpoint else "no", entry.description)
    out.print(table)
    out.print("peers: " + ", ".join(f"{k} ({v})" for k, v in PEERS.items()))


@main.command()
def targets() -> None:
    """List the built-in targets (any local HF model directory works too)."""
    from .loading import TARGETS

    table = Table("target", "description")
    for name, text in TARGETS.items():
        table.add_row(name, text)
    out.print(table)


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.md, report.html and report-figures/ (default: the first run directory).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead of RUN_DIRS: re-render every [[report]] of this TOML manifest (reports/reports.toml).")
def report(run_dirs, out, manifest):
    """Write report.md and a self-contained report.html from run directories (results files only)."""
    from .report import render_manifest, write_report

    if manifest is not None and (run_dirs or out is not None):
        _fail("give either RUN_DIRS [--out DIR] or --manifest FILE, not both")
    if manifest is None and not run_dirs:
        _fail("give at least one run directory (or --manifest FILE)")
    for files in render_manifest(manifest) if manifest is not None else (write_report(list(run_dirs), out),):
        click.echo(f"report: {files.markdown}")
        click.echo(f"report: {files.html}")


@main.command("check-stale")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check every run directory this report manifest names (reports/reports.toml).")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path),
              help="The git checkout to compare with (default: the one this coral-bench runs from).")
def check_stale(run_dirs, manifest, repo):
    """Did decoder or drafter code change since these runs were made? Exit 1 when any run is stale or
    cannot be checked (one line each), 0 when all are current."""
    from .report import manifest_runs
    from .staleness import check_runs

    runs = list(run_dirs) + [r for r in (manifest_runs(manifest) if manifest is not None else ()) if r not in run_dirs]
    if not runs:
        _fail("give at least one run directory (or --manifest FILE)")
    verdicts = check_runs(runs, repo if repo is not None else Path(__file__).resolve().parent)
    for verdict in verdicts:
        click.echo(verdict.line)
    if all(v.ok for v in verdicts):
        click.echo(f"check-stale: all {len(verdicts)} run(s) current: no decoder or drafter change since they were made")
        return
    bad = sum(not v.ok for v in verdicts)
    click.echo(f"check-stale: {bad} of {len(verdicts)} run(s) stale or unverifiable: redo them before trusting "
               "the report as current")
    sys.exit(1)


@main.command("gen-data")
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

    from .loading import load_target
    from .train.data import DataConfig, DataProgress, features_from_ids, generate_store

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
    with Progress(*columns, console=err, transient=False) as bar:
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


@main.command()
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp64"]),
              help="bf16 = fp32 weights + bf16 autocast. Default: bf16 where the CPU runs it natively, else fp32.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Optimizer steps (0: end only).")
@click.option("--resume", is_flag=True, help="Continue from --out's training state.")
@click.option("--time-limit", type=float, metavar="SECONDS",
              help="Stop cleanly after this much training time: state and drafter so far are saved "
                   "(marked incomplete); --resume continues.")
@click.option("--eval-fraction", type=float, default=0.02, show_default=True, help="Held-out sequences.")
@click.option("--max-sequences", type=click.IntRange(min=1), metavar="N",
              help="Train on the first N training sequences only (sweeps on a shorter budget; the held-out "
                   "split and --loss-vocab's token counts stay those of the whole store). Default: all.")
@click.option("--device", help="cpu, cuda… Default: Accelerate's device for this process.")
@click.option("--threads", type=int, help="torch threads (recorded). Default: torch's.")
def train(method, data, out, target, epochs, lr, warmup_steps, schedule, batch_tokens, steps, history,
          csra_temperature, csra_weight, csra_negatives, csra_anchor, distill_k, distill_weight, step_decay,
          loss_vocab, feature_noise, seed, dtype, checkpoint_every, resume, time_limit, eval_fraction, max_sequences,
          device, threads):
    """Train an EAGLE-2 / HASS / CORAL drafter on a feature store (single process or `accelerate launch`)."""
    import torch
    from accelerate import PartialState

    from .devices import cpu_has_native_bf16
    from .loading import load_target
    from .train.loop import train as run_training
    from .train.reporting import RichReporter
    from .train.settings import settings_for
    from .train.store import read_manifest

    if threads:
        torch.set_num_threads(threads)
    manifest = read_manifest(data)
    named = manifest.get("target")
    named = named.get("name") if isinstance(named, dict) else named
    target = target or named
    if not target:
        _fail(f"{data}: the store's manifest names no target; pass --target")
    loss = {k: v for k, v in dict(csra_weight=csra_weight, distill_weight=distill_weight).items() if v is not None}
    dtype = dtype or ("bf16" if device in (None, "cpu") and cpu_has_native_bf16() else "fp32")
    settings = settings_for(
        method, steps=steps, epochs=epochs, lr=lr, warmup_steps=warmup_steps, schedule=schedule,
        batch_tokens=batch_tokens, history=history, csra_temperature=csra_temperature, csra_negatives=csra_negatives,
        csra_anchor=csra_anchor, distill_k=distill_k, step_decay=step_decay, feature_noise=feature_noise, seed=seed,
        dtype=dtype, checkpoint_every=checkpoint_every, eval_fraction=eval_fraction, loss_vocab=loss_vocab,
        max_sequences=max_sequences, **loss)
    state = PartialState(cpu=device == "cpu")
    dev = device or str(state.device)
    loaded = load_target(target, dtype="float64" if dtype == "fp64" else "float32", device=dev)
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    result = run_training(data, out, settings, loaded.target, resume=resume, reporter=RichReporter(err),
                          target_name=target, command=command, time_limit_s=time_limit)
    if state.is_main_process:
        partial = "" if result.metadata["budget"]["complete"] else "; stopped by --time-limit, --resume continues"
        err.print(f"drafter: {result.out} ({result.optimizer_steps} optimizer steps, {result.tokens:,} tokens, "
                  f"{result.wall_time_s:.0f} s{partial})")
        if result.eval is not None:
            acc = ", ".join(f"{a:.3f}" for a in result.eval.accuracy)
            err.print(f"held-out top-1 agreement by depth: {acc}")


# ---- profiling, the speedup model and replay (METHODS.md §7) --------------------------------


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """``1-64``, ``1,2,4,8`` or ``1-8,16,32`` → sorted distinct positive integers (None for None)."""
    if text is None:
        return None
    values: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            values.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 1-64 or 1,2,4,8", param_hint=option) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give integers >= 1", param_hint=option)
    return tuple(sorted(values))


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3f}"


def _print_load(env: dict) -> None:
    out.print(f"device {env.get('device')} · {env.get('dtype')} · {env.get('threads')} threads · clock "
              f"{env.get('clock')} · load {env.get('load_average_before')} → {env.get('load_average_after')}")
    if env.get("busy_machine"):
        err.print("[bold yellow]WARNING: the machine was busy while profiling: timings are approximate[/bold yellow]")


def _print_target_profile(body: dict) -> None:
    regions = body.get("target_regions", [])
    if regions:
        table = Table(title=f"target {body['target']}: one tree forward (ms, median repeat)")
        for col in ("rows", "context", "total", "embedding", "layers Σ", "per layer (min–max)", "norm", "LM head",
                    "other"):
            table.add_column(col, justify="right")
        for r in regions:
            reg = r["regions"]
            layers = [v for k, v in reg.items() if k.startswith("layer.")]
            table.add_row(str(r["rows"]), str(r["context"]), _ms(r["total_s"]), _ms(reg["embedding"]),
                          _ms(sum(layers)), f"{_ms(min(layers))}–{_ms(max(layers))}", _ms(reg["norm"]),
                          _ms(reg["lm_head"]), _ms(reg["other"]))
        out.print(table)
    if body.get("t_v"):
        contexts = sorted({p["context"] for p in body["t_v"]})
        nodes = sorted({p["nodes"] for p in body["t_v"]})
        shown = [n for n in nodes if n in (1, 2, 4, 8, 16, 32, 48, 64) or n == nodes[-1]]
        value = {(p["nodes"], p["context"]): p["seconds"] for p in body["t_v"]}
        table = Table(title="T_V(n, ctx) ms: Target.score of an n-node tree")
        table.add_column("n", justify="right")
        for c in contexts:
            table.add_column(f"ctx {c}", justify="right")
        for n in shown:
            table.add_row(str(n), *(_ms(value[(n, c)]) for c in contexts))
        out.print(table)
        out.print("T_pf(P) ms: " + ", ".join(f"P={p['prompt_tokens']}: {_ms(p['seconds'])}" for p in body["t_pf"]))


def _print_method_profiles(body: dict) -> None:
    for label, m in body.get("methods", {}).items():
        if not m.get("supported"):
            out.print(f"[bold]{label}[/bold]: not profiled ({m.get('reason')})")
            continue
        loop = m["loop"]
        out.print(f"[bold]{label}[/bold] ({m['name']}, tree {m['tree']}): no-op loop per cycle µs: tree/rerank "
                  f"{loop['tree_s'] * 1e6:.0f}, verify {loop['verify_s'] * 1e6:.0f}, commit {loop['commit_s'] * 1e6:.0f}, "
                  f"loop {loop['loop_s'] * 1e6:.0f} (score call {loop['score_call_s'] * 1e6:.0f}, inside T_V) over "
                  f"{loop['cycles']} cycles")
        if m.get("early_exit"):
            ee = m["early_exit"]
            out.print(f"  early exit: {ee['steps']} steps per cycle through {ee['exit_layers']} of "
                      f"{len(ee['layers'])} target layers + LM head (per-layer latencies and measured step glue)")
        if m.get("head_rows"):
            hr = m["head_rows"]
            out.print(f"  {hr['kind']} draft head: {hr['rows_per_union']:.0f} LM-head rows per selected group, "
                      f"timed at U = {sorted({p['head_rows'] for p in hr['matmul']})} rows")
        if not m.get("forward"):
            continue
        _print_drafter_regions(label, m)


def _print_drafter_regions(label: str, m: dict) -> None:
    names = ("fc", "layer", "embedding, RoPE, concat", "lm_head", "softmax_topk")
    table = Table(title=f"{label}: drafter forwards (ms)")
    for col in ("forward", "rows", "context", *names, "total"):
        table.add_column(col, justify="right")
    regions = m["regions"]
    middle = sorted({r["context"] for r in regions})[len({r["context"] for r in regions}) // 2]
    for r in regions:
        if r["context"] == middle:
            table.add_row(r["kind"], str(r["rows"]), str(r["context"]), *(_ms(r["regions"][n]) for n in names),
                          _ms(r["total_s"]))
    out.print(table)
    pf = m["forward"]["prefill"]
    out.print(f"  T_dpf(P) ms: " + ", ".join(f"P={p['prompt_tokens']}: {_ms(p['seconds'])}" for p in pf))
    out.print(f"  parameters fc + layer {m['parameters'] / 1e6:.1f}M, LM head {m['lm_head_parameters'] / 1e6:.1f}M · "
              f"lm_head_share {m['lm_head_share']:.1%}, lm_head_total_share {m['lm_head_total_share']:.1%} "
              f"(per cycle, first forward over {m['first_rows']:.2f} slots)")


def _print_shape_report(body: dict) -> None:
    _print_load(body)
    m = next(iter(body["methods"].values()))
    out.print(f"[bold]{body['target']}[/bold] ({body.get('source')}, random weights)")
    _print_drafter_regions(body["target"], m)
    if body.get("t_v"):
        _print_target_profile(body)


@main.command("profile")
@click.option("--target", default="smollm2-135m", show_default=True, help="Without --run: the target to profile.")
@click.option("--drafter", "drafters", multiple=True, metavar="[LABEL=]NAME[:CKPT][@tree=SHAPE]",
              help="Drafters to profile (repeatable; default without --run: a random-weight eagle).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A run directory: its target, dtype, threads, drafters and lengths; writes profile.json and "
                   "results.json there.")
@click.option("--shape", "shapes", multiple=True, metavar="llama3-8b|llama2-7b|qwen2.5-7b|PATH/config.json",
              help="An EAGLE drafter of a real model's shape (repeatable; needs --random-weights).")
@click.option("--random-weights", is_flag=True, help="With --shape: confirm random weights (latency does not depend on them).")
@click.option("--with-target", is_flag=True, help="With --shape: profile the whole target too, where memory allows.")
@click.option("--tree", callback=_tree, help="Tree for drafters without @tree: chain:N or top_k=K,depth=D,total_tokens=T.")
@click.option("--nodes", default="1-64", show_default=True, help="n of T_V(n, ctx): 1-64, 1,2,4,8 …")
@click.option("--contexts", help="ctx of T_V and drafter forwards (default: the run's min P, median and max P + N; "
                                 "else 128,512; with --shape 256).")
@click.option("--prompts", help="P of T_pf / T_dpf (default: the run's min, median, max P; else 32,128,512).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Timed repeats per point (median).")
@click.option("--noop-cycles", type=click.IntRange(1), default=300, show_default=True, help="Cycles of the no-op loop.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]), help="Without --run.")
@click.option("--device", help="Without --run.")
@click.option("--threads", type=int, help="Without --run (a run's own count is used with --run).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Without --run: write profile.json here.")
def profile_command(target, drafters, run_dir, shapes, random_weights, with_target, tree, nodes, contexts, prompts,
                    repeats, noop_cycles, dtype, device, threads, out):
    """Latency per layer and region, T_V(n, ctx), prefill and per-cycle loop costs (METHODS.md §7)."""
    import json

    from . import profile as pf
    from .methods import DrafterSpec

    _quiet_transformers()
    if tree == "auto":
        _fail("--tree auto is not supported by profile; give a shape")
    if shapes and not random_weights:
        _fail("--shape builds a model without weights: pass --random-weights to confirm")
    if with_target and not shapes:
        _fail("--with-target goes with --shape")
    shape_mode = bool(shapes)
    settings = pf.ProfileSettings(
        nodes=_ints(nodes, "--nodes") if not shape_mode or with_target else (1,),
        contexts=_ints(contexts, "--contexts") or ((256,) if shape_mode else (128, 512)),
        prompts=_ints(prompts, "--prompts") or ((256,) if shape_mode else (32, 128, 512)),
        repeats=repeats, noop_cycles=noop_cycles)
    specs = [DrafterSpec.parse(d) for d in drafters]
    if shape_mode:
        from .shapes import profile_shapes

        reports = profile_shapes(shapes, dtype, device, threads, tree, settings, with_target)
        for report in reports:
            _print_shape_report(report.to_json())
        if out:
            out.write_text(json.dumps({r.target: r.to_json() for r in reports}, indent=2) + "\n")
        return
    if run_dir is not None:
        report = pf.profile_run(run_dir, settings, specs, own_lengths=contexts is None and prompts is None)
        where = run_dir / pf.PROFILE
    else:
        report = pf.profile_standalone(target, dtype, device, threads, specs, tree, settings)
        where = out
        if out:
            out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    body = report.to_json()
    _print_load(body)
    _print_target_profile(body)
    _print_method_profiles(body)
    if where:
        err.print(f"profile: {where}")


def _what_if(text: str):
    """``tree=SHAPE`` → a TreeShape; ``drafter=SPEC`` → a DrafterSpec (a drafter the run did not time)."""
    from .methods import DrafterSpec, MethodError
    from .tree import TreeError, TreeShape

    kind, eq, value = text.partition("=")
    if kind not in ("tree", "drafter") or not eq or not value:
        raise click.BadParameter(f"{text!r}: use tree=SHAPE or drafter=[LABEL=]NAME[:CKPT][@…]", param_hint="--what-if")
    try:
        return TreeShape.parse(value) if kind == "tree" else DrafterSpec.parse(value)
    except (TreeError, MethodError) as exc:
        raise click.BadParameter(str(exc), param_hint="--what-if") from None


def _print_estimate(e) -> None:
    from .speedup import gap_rows

    p = e.prediction
    kind = "what-if (τ from replay)" if e.what_if else "run"
    out.print(f"[bold]{e.label}[/bold] · tree {e.tree} · {kind}: predicted speedup {_fmt(p.speedup)} "
              f"(decode {_fmt(p.speedup_decode)}), measured {_fmt(e.speedup)} (decode {_fmt(e.speedup_decode)}) · "
              f"τ {_fmt(p.tau)} · SR_∞ {_fmt(p.sr_infinity)}")
    table = Table(title=f"{e.label}: time per cycle (ms), prefill summed over samples")
    for col in ("stage", "predicted", "measured", "measured − predicted"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in gap_rows(p, e.measured):
        if row.predicted == 0 and row.measured is None:
            continue  # a term this drafter does not have (model-free: no forwards)
        gap = None if row.measured is None else row.measured - row.predicted
        table.add_row(row.stage, _ms(row.predicted), _ms(row.measured), _ms(gap))
    table.add_row("vanilla step (predicted T_AR)", _ms(p.vanilla_per_cycle.total), "", "")
    out.print(table)
    if p.leviathan is not None:
        lev = p.leviathan
        out.print(f"  Leviathan chain form (reference; assumes T_V(γ+1) = T_AR): α {lev.alpha:.3f}, γ {lev.gamma:g}, "
                  f"c {lev.c:.3f} → E/(γc+1) = {lev.value:.2f}")


@main.command("estimate-speedup")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--what-if", "what_ifs", multiple=True, metavar="tree=SHAPE|drafter=SPEC",
              help="Also predict another tree for the run's drafters, or a drafter the run did not time "
                   "(e.g. drafter=k1=coral-router:CKPT@router_k=1); τ from replay (repeatable).")
@click.option("--drafter", "labels", multiple=True, help="Only these drafter labels (default: all).")
def estimate_speedup(run_dir, what_ifs, labels):
    """Predicted vs measured speedup per drafter, explained stage by stage (METHODS.md §7)."""
    from .replay import estimate_run

    _quiet_transformers()
    from .tree import TreeShape

    asked = [_what_if(w) for w in what_ifs]
    trees = [w for w in asked if isinstance(w, TreeShape)]
    specs = [w for w in asked if not isinstance(w, TreeShape)]
    estimates = estimate_run(run_dir, trees, labels, note=lambda text: err.print(f"[dim]{text}[/dim]"),
                             drafters=specs)
    if not estimates:
        _fail(f"no drafter of {run_dir} could be estimated")
    for e in estimates:
        _print_estimate(e)
    err.print(f"predictions: {run_dir / 'results.json'}")


@main.command("replay")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--drafter", "drafter", required=True, metavar="[LABEL=]NAME[:CKPT][@tree=SHAPE]")
@click.option("--tree", callback=_tree, help="Tree to replay (default: @tree, else the run's tree for LABEL).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads. Default: the run's (replay times nothing, so it may share the machine).")
def replay_command(run_dir, drafter, tree, threads):
    """Exact τ at T = 0 (E[accepted] at T > 0) of a drafter and tree against the run's vanilla output."""
    import json

    from .methods import DrafterSpec
    from .replay import replay_run, save_replay

    _quiet_transformers()
    if tree == "auto":
        _fail("--tree auto is not supported by replay; give a shape")
    spec = DrafterSpec.parse(drafter)
    with Progress(TextColumn(f"replay {spec.label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = replay_run(run_dir, spec.label, spec.name, spec.checkpoint, tree or spec.tree,
                            progress=progress, threads=threads, command=shlex.join(["coral-bench", *sys.argv[1:]]))
    path = save_replay(run_dir, result)
    measured = json.loads((run_dir / "results.json").read_text()).get("drafters", {}).get(spec.label, {})
    same = measured.get("tree") == result.tree.describe()
    out.print(f"{spec.label} · {result.tree.describe()} · T={result.temperature:g}: τ pooled {_fmt(result.tau_pooled)}"
              + (f", τ expected {_fmt(result.tau_expected)}" if result.tau_expected is not None else "")
              + f" over {result.cycles} cycles, {len(result.samples)} samples"
              + (f" (run measured τ {_fmt(measured.get('tau_pooled'))})" if same else ""))
    mismatches = sum(s.mismatches for s in result.samples)
    if mismatches:
        err.print(f"[yellow]{mismatches} recorded tokens differ from the teacher-forced greedy token (near-ties)[/yellow]")
    err.print(f"replay: {path}")


# ---- CORAL's LM-head router, stage 2 (METHODS.md §6) ---------------------------------------


@main.command("train-router")
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
def train_router_command(drafter, data, router_groups, router_k, partition, out_dir, label, epochs, lr, steps,
                         batch_tokens, eval_fraction, recall_top_k, score, target, seed, dtype, max_sequences, threads):
    """Train CORAL's LM-head router on a frozen stage-1 drafter (two-stage protocol, METHODS.md §6)."""
    import torch

    from .loading import load_target
    from .train.router_loop import RouterSettings, train_router
    from .train.store import read_manifest

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
    loaded = load_target(target, dtype="float64" if dtype == "fp64" else "float32", device="cpu")
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    with Progress(TextColumn("router"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err) as bar:
        task = bar.add_task("router", total=None, info="")

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.4g}")

        result = train_router(drafter, data, out_dir, settings, loaded.target, progress=progress, target_name=target,
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
