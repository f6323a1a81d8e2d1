"""Profiling, the speedup model and replay (docs/methods.md §7): ``profile``, ``estimate-speedup``, ``replay``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from coral_bench.run.progress import progress_bar
from .common import _fail, _fmt, _quiet_transformers, _tree, err, out


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
    out.print("  T_dpf(P) ms: " + ", ".join(f"P={p['prompt_tokens']}: {_ms(p['seconds'])}" for p in pf))
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


@click.command("profile")
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
    """Latency per layer and region, T_V(n, ctx), prefill and per-cycle loop costs (docs/methods.md §7)."""
    import json

    from coral_bench.costmodel import profile as pf
    from coral_bench.run.specs import DrafterSpec

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
        from coral_bench.costmodel.shapes import profile_shapes

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
    from coral_bench.run.specs import DrafterSpec, MethodError
    from coral_bench.core.tree import TreeError, TreeShape

    kind, eq, value = text.partition("=")
    if kind not in ("tree", "drafter") or not eq or not value:
        raise click.BadParameter(f"{text!r}: use tree=SHAPE or drafter=[LABEL=]NAME[:CKPT][@…]", param_hint="--what-if")
    try:
        return TreeShape.parse(value) if kind == "tree" else DrafterSpec.parse(value)
    except (TreeError, MethodError) as exc:
        raise click.BadParameter(str(exc), param_hint="--what-if") from None


def _print_estimate(e) -> None:
    from coral_bench.costmodel.speedup import gap_rows

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


@click.command("estimate-speedup")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--what-if", "what_ifs", multiple=True, metavar="tree=SHAPE|drafter=SPEC",
              help="Also predict another tree for the run's drafters, or a drafter the run did not time "
                   "(e.g. drafter=k1=coral-router:CKPT@router_k=1); τ from replay (repeatable).")
@click.option("--drafter", "labels", multiple=True, help="Only these drafter labels (default: all).")
def estimate_speedup(run_dir, what_ifs, labels):
    """Predicted vs measured speedup per drafter, explained stage by stage (docs/methods.md §7)."""
    from coral_bench.costmodel.replay import estimate_run

    _quiet_transformers()
    from coral_bench.core.tree import TreeShape

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


@click.command("replay")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--drafter", "drafter", required=True, metavar="[LABEL=]NAME[:CKPT][@tree=SHAPE]")
@click.option("--tree", callback=_tree, help="Tree to replay (default: @tree, else the run's tree for LABEL).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads. Default: the run's (replay times nothing, so it may share the machine).")
def replay_command(run_dir, drafter, tree, threads):
    """Exact τ at T = 0 (E[accepted] at T > 0) of a drafter and tree against the run's vanilla output."""

    from coral_bench.run.specs import DrafterSpec
    from coral_bench.costmodel.replay import replay_run, save_replay
    from coral_bench.rundir.recorded import drafter_results

    _quiet_transformers()
    if tree == "auto":
        _fail("--tree auto is not supported by replay; give a shape")
    spec = DrafterSpec.parse(drafter)
    with progress_bar(TextColumn(f"replay {spec.label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"replay {spec.label}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = replay_run(run_dir, spec.label, spec.name, spec.checkpoint, tree or spec.tree,
                            progress=progress, threads=threads, command=shlex.join(["coral-bench", *sys.argv[1:]]))
    path = save_replay(run_dir, result)
    measured = drafter_results(run_dir).get(spec.label, {})
    same = measured.get("tree") == result.tree.describe()
    out.print(f"{spec.label} · {result.tree.describe()} · T={result.temperature:g}: τ pooled {_fmt(result.tau_pooled)}"
              + (f", τ expected {_fmt(result.tau_expected)}" if result.tau_expected is not None else "")
              + f" over {result.cycles} cycles, {len(result.samples)} samples"
              + (f" (run measured τ {_fmt(measured.get('tau_pooled'))})" if same else ""))
    mismatches = sum(s.mismatches for s in result.samples)
    if mismatches:
        err.print(f"[yellow]{mismatches} recorded tokens differ from the teacher-forced greedy token (near-ties)[/yellow]")
    err.print(f"replay: {path}")
