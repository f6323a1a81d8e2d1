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
@click.option("--tree", callback=_tree, help="Tree for every drafter: chain:N or top_k=K,depth=D,total_tokens=T.")
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
    if tree == "auto":
        _fail("--tree auto needs the cost model, which is not built yet; give a shape")
    if resume and out is None:
        raise click.BadParameter("--resume needs the --out of the run to continue", param_hint="--resume")
    config = RunConfig(suite=suite, target=target, drafters=tuple(DrafterSpec.parse(d) for d in drafters),
                       peers=tuple(peers), tree=tree, limit=limit, max_new_tokens=max_new_tokens,
                       sampling=SamplingConfig(temperature=temperature, top_p=top_p, top_k=sample_top_k, seed=seed),
                       dtype=dtype, device=device, threads=threads, require_idle=require_idle)
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
                          _fmt(row.get("tau_per_question")), speed, _fmt(row.get("equal_to_vanilla"), "{:.0%}"))
    out.print(table)
    ratio = base.get("vanilla_over_hf_vanilla")
    if ratio is not None:
        out.print(f"vanilla / hf-vanilla tokens/s: {ratio:.3f} (goal ≥ 0.95; a slow vanilla inflates every speedup)")
    prov = results["provenance"]
    if prov.get("busy_machine"):
        err.print(f"[bold yellow]WARNING: the machine was busy (load {prov['load_average_before']} → "
                  f"{prov['load_average_after']}): timings are not trustworthy[/bold yellow]")


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
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.md, report.html and report-figures/ (default: the first run directory).")
def report(run_dirs, out):
    """Write report.md and a self-contained report.html from run directories (results files only)."""
    from .report import write_report

    files = write_report(list(run_dirs), out)
    click.echo(f"report: {files.markdown}")
    click.echo(f"report: {files.html}")


@main.command("gen-data")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Store directory.")
@click.option("--target", default="smollm2-135m", show_default=True, help="Registry name, local model directory or cached HF id.")
@click.option("--sources", default="sharegpt,gsm8k", show_default=True,
              help="Comma-separated: sharegpt, gsm8k, or .jsonl/.json files (FastChat turns or ShareGPT conversations).")
@click.option("--max-prompts", type=int, help="Stop after N prompts (default: every prompt that passes the filters).")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Per response.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--max-batch-tokens", type=int, default=1 << 16, show_default=True, help="Padded prompt tokens per batch.")
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
@click.option("--from-ids", "from_ids", type=click.Path(file_okay=False, path_type=Path),
              help="Recompute features for the ids of this store by a teacher-forced forward (with --ids-only: export its ids).")
def gen_data(out, target, sources, max_prompts, max_new_tokens, batch_size, max_batch_tokens, max_prompt_tokens, turns,
             responses, temperature, capture, store_dtype, shard_tokens, dtype, device, threads, seed, resume, ids_only,
             from_ids):
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
                                         resume=resume, command=command, progress=progress)
        else:
            manifest = generate_store(loaded, config, out, resume=resume, command=command, progress=progress)
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
