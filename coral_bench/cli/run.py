"""The ``run`` command and its summary table."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from coral_bench.run.progress import progress_bar
from .common import _fmt, _quiet_transformers, _tree, err, out

FIXED = "fixed"  # --tree fixed: every drafter decodes with its registry default tree


@click.command()
@click.option("--suite", required=True, help="Suite name (see `coral-bench suites`) or a FastChat/Spec-Bench .jsonl file.")
@click.option("--target", default="smollm2-135m", show_default=True, help="Registry name, local model directory or cached HF id.")
@click.option("--drafter", "drafters", multiple=True, metavar="[LABEL=]NAME[:CKPT][@tree=SHAPE]",
              help="A drafter to compare with vanilla (repeatable).")
@click.option("--peer", "peers", multiple=True, help="A peer implementation (hf-vanilla always runs; `--peer none`: no peer at all).")
@click.option("--tree", callback=lambda ctx, param, value: value if value == FIXED else _tree(ctx, param, value),
              default="auto", show_default=True, envvar="CORAL_BENCH_TREE",
              help="auto: each EAGLE-style drafter gets the tree the cost model predicts fastest on this machine "
              "(measured once per machine and drafter, then cached); fixed: every drafter's registry default; "
              "chain:N or top_k=K,depth=D,total_tokens=T: that tree for every drafter. A drafter's @tree wins. "
              "Env: CORAL_BENCH_TREE.")
@click.option("--retune", is_flag=True, help="With --tree auto: measure the trees again (the cached choices are replaced).")
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
@click.option("--shard", callback=lambda ctx, param, value: _shard(value), metavar="I/N",
              help="Only every N-th question from the I-th (0-based), e.g. one shard per GPU; join with coral-bench merge.")
def run(suite, target, drafters, peers, tree, retune, limit, max_new_tokens, temperature, top_p, sample_top_k, seed,
        dtype, device, threads, out, resume, require_idle, shard):
    """Run vanilla, each drafter and each peer over a suite and compare them."""
    from coral_bench.run.runner import RunConfig, run_suite
    from coral_bench.run.specs import DrafterSpec
    from coral_bench.core.sampling import SamplingConfig
    from coral_bench.run.suites import load_suite

    _quiet_transformers()

    if limit is not None and limit < 1:
        raise click.BadParameter("must be >= 1", param_hint="--limit")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-new-tokens")
    specs = tuple(DrafterSpec.parse(d) for d in drafters)
    auto = None
    if tree == FIXED:
        tree = None
    elif tree == "auto":  # EAGLE-style drafters: the tree the cost model predicts fastest here, chosen before the run
        from coral_bench.costmodel.tree_search import AutoSettings, tunes_any
        from coral_bench.run.devices import resolve_device

        tree, auto = None, AutoSettings.for_device(resolve_device(device).type) if tunes_any(specs) else None
    if resume and out is None:
        raise click.BadParameter("--resume needs the --out of the run to continue", param_hint="--resume")
    config = RunConfig(suite=suite, target=target, drafters=specs,
                       peers=tuple(peers), tree=tree, limit=limit, max_new_tokens=max_new_tokens,
                       sampling=SamplingConfig(temperature=temperature, top_p=top_p, top_k=sample_top_k, seed=seed),
                       dtype=dtype, device=device, threads=threads, require_idle=require_idle,
                       tree_auto=auto.to_json() if auto else None, shard=shard)
    load_suite(suite)  # fail fast on a bad suite, before loading a model
    if out is None:
        stem = Path(suite).stem if suite.endswith(".jsonl") else suite
        out = Path("runs") / f"{stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with progress_bar(*columns, console=err) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done: int, total: int, method: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{Path(out).name} [{method}]")

        choose = None
        if auto is not None:
            from coral_bench.costmodel.tree_cache import TreeCache
            from coral_bench.costmodel.tree_search import tree_chooser

            choose = tree_chooser(config.drafters, auto, config.sampling.seed, TreeCache.default(), retune,
                                  progress=lambda text: (bar.update(task, description=text), err.print(text)))
        results = run_suite(config, out, resume=resume, command=command, progress=progress, choose_trees=choose)
    _print_summary(results)
    out_path = out / "results.json"
    out.mkdir(exist_ok=True)
    err.print(f"results: {out_path}")


def _shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, slash, count = value.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise click.BadParameter(f"{value!r} is not I/N with 0 <= I < N (e.g. 0/4)", param_hint="--shard")
    return int(index), int(count)


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="The merged run directory.")
def merge(shards, out):
    """Join the run directories of `run --shard 0/N` … `N-1/N` into one run (results as if unsharded)."""
    from coral_bench.run.merge import merge_shards

    _quiet_transformers()
    command = shlex.join(["coral-bench", *sys.argv[1:]])
    with progress_bar(TextColumn("{task.description}"), console=err) as bar:
        task = bar.add_task(f"merging {len(shards)} shards into {out}", total=None)
        results = merge_shards(list(shards), out, command,
                               progress=lambda done, total, method: bar.update(task, completed=done, total=total))
    _print_summary(results)
    err.print(f"results: {out / 'results.json'}")


def _equality(row: dict) -> str:
    """Identical to the run's vanilla samples, and the identical / numerical / divergent counts when not all are."""
    equal, judged = row.get("equal_to_vanilla"), row.get("equality")
    if equal is None or not judged:
        return "–"
    if equal == 1.0:
        return "100%"
    return f"{equal:.0%} ({judged['identical']}/{judged['numerical']}/{judged['divergent']} id/num/div)"


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
