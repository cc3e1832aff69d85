"""The click command line. It parses, calls plain functions that return data, and prints.

Exit codes (docs/architecture.md#exit-codes): 0 ok, 1 a case failed or a regression, 2 bad input, 3 environment problem.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

EXIT_BAD_INPUT = 2
MAX_CONTEXT = 1_000_000_000  # params --context: keys per token; far above any model's context window
MAX_CONFIG_BYTES = 8 << 20  # a config.json is a few KB; a bigger file is not one


class MoebenchGroup(click.Group):
    """Turns the library's ValueErrors (bad spec, bad config, unknown name) and click's usage errors
    (bad option values) into exit 2 with one line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # click's own report is four lines: usage, hint, blank, error
            where = err.ctx.command_path if err.ctx else "moebench"
            click.echo(f"moebench: error: {where}: {err.format_message()} (see {where} --help)", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except ValueError as err:
            click.echo(f"moebench: error: {err}", err=True)
            sys.exit(EXIT_BAD_INPUT)


def _check_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """More threads than cores measures the contention between them, not the layer."""
    from moebench.runner import usable_cpus

    if value is not None and value > usable_cpus():
        raise click.BadParameter(f"{value} is more than the {usable_cpus()} CPUs this process may use")
    return value


def _check_out_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A path the command can create later: not empty, and its nearest existing ancestor a writable
    folder. Checked before anything runs, so a typo costs no benchmark time and writes nothing."""
    if value is None:
        return value
    if not value.strip():
        raise click.BadParameter("is empty; name a folder or file to write")
    path = Path(value)
    ancestor = next((p for p in (path, *path.parents) if p.exists()), None)
    if ancestor == path and not path.is_dir():
        return value  # an existing file: click's file_okay / dir_okay have judged it
    if ancestor is None or not ancestor.is_dir():
        raise click.BadParameter(f"{value!r} cannot be created: {str(ancestor)!r} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{value!r} cannot be created: {str(ancestor)!r} is not writable")
    return value


@click.group(cls=MoebenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moebench")
def cli() -> None:
    """Benchmark and profile Mixture-of-Experts layer designs."""


@cli.command("list")
def list_cmd() -> None:
    """List layer variants, dispatch backends and model presets."""
    from moebench.dispatch import BACKENDS
    from moebench.layers import VARIANTS

    click.echo("variants:")
    for name, cls in VARIANTS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(f"  {name:<14} {doc}")
    click.echo("backends:")
    for name, backend in BACKENDS.items():
        flags = []
        flags.append("dropless" if backend.supports_dropless else "")
        flags.append("capacity" if backend.supports_capacity else "")
        flags.append("graph-capturable" if backend.graph_capturable else "")
        flags.append("host-syncs" if backend.host_syncs else "no-host-sync")
        click.echo(f"  {name:<14} {backend.description}  [{', '.join(f for f in flags if f)}]")
    _echo_presets()
    from moebench.suite import bundled_suites, load_suite

    click.echo("suites:")
    for name in bundled_suites():
        click.echo(f"  {name:<14} {load_suite(name).description}")


def _echo_presets() -> None:
    from moebench.accounting import model_active_params, model_params
    from moebench.presets import PRESETS

    click.echo("presets:")
    for name, shape in PRESETS.items():
        spec = shape.moe
        total, active = sum(model_params(shape).values()), sum(model_active_params(shape).values())
        shared = f" + {spec.n_shared} shared" if spec.n_shared else ""
        click.echo(f"  {name:<18} {_human(total)} total / {_human(active)} active, {shape.n_layers} layers, "
                   f"{spec.variant} E={spec.n_experts} K={spec.top_k}{shared}")


# --- params ---------------------------------------------------------------------------------------

def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _exact(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def _load_model(target: str):
    """A preset name, or a path to a HuggingFace config.json. Returns (ModelShape, source)."""
    from moebench.interop.hf_config import model_from_hf_config
    from moebench.presets import PRESETS

    if target in PRESETS:
        return PRESETS[target], "preset"
    if not (target.endswith(".json") or os.sep in target or os.path.exists(target)):
        raise ValueError(f"unknown preset {target!r}; valid presets are {', '.join(PRESETS)} "
                         "(or pass the path of a HuggingFace config.json)")
    cfg = _read_config_json(target)
    try:
        return model_from_hf_config(cfg), target
    except ValueError as err:
        raise ValueError(f"config file {target!r}: {err}") from None


def _read_config_json(target: str):
    """The JSON of a config file, bounded in size and nesting; every failure names the file."""
    import json

    try:
        with open(target, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ValueError(f"config file {target!r} cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {target!r} is larger than {MAX_CONFIG_BYTES:,} bytes, too big for a "
                         "config.json")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {target!r} is not a text file (byte {err.start} is not UTF-8)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {target!r} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"config file {target!r} is not valid JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"config file {target!r} is not valid JSON: {err}") from None


@cli.command("params")
@click.argument("target", metavar="PRESET|CONFIG.json")
@click.option("--embeddings", type=click.Choice(["both", "output", "none"]), default="both", show_default=True,
              help="Active-count convention: input table + LM head, LM head only, or neither.")
@click.option("--context", "context_len", type=click.IntRange(min=0, max=MAX_CONTEXT), default=0, show_default=True,
              help="Keys attended to per token, for the attention-score FLOPs (0 leaves them out).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def params_cmd(target: str, embeddings: str, context_len: int, as_json: bool) -> None:
    """Total / active parameters and forward FLOPs per token of a preset or a config.json."""
    import json

    from moebench.accounting import model_active_params, model_summary
    from moebench.presets import PUBLISHED

    shape, source = _load_model(target)
    summary = model_summary(shape, embeddings, context_len)
    summary["source"] = source
    published = PUBLISHED.get(shape.name) if source == "preset" else None
    if published is not None:
        ours = sum(model_active_params(shape, published.active_embeddings).values())
        summary["published"] = {"total": published.total, "active": published.active,
                                "active_embeddings": published.active_embeddings, "source": published.source,
                                "our_active_under_that_convention": ours}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    p, fl, lay, spec = summary["params"], summary["flops_per_token"], summary["layers"], shape.moe
    click.echo(f"{shape.name} ({source})")
    click.echo(f"layers: {lay['total']} ({lay['moe']} MoE, {lay['dense_ffn']} dense FFN; "
               f"{lay['attention']} attention, {lay['mamba']} Mamba)")
    click.echo(f"parameters {'':<14} {'total':>24}   active (embeddings={embeddings})")
    for part, n in p["total_by_part"].items():
        a = p["active_by_part"][part]
        click.echo(f"  {part:<24} {_human(n):>8} {_exact(n):>17}   {_human(a):>8} {_exact(a):>17}")
    click.echo(f"  {'total':<24} {_human(p['total']):>8} {_exact(p['total']):>17}   "
               f"{_human(p['active']):>8} {_exact(p['active']):>17}")
    if published is not None:
        pub = summary["published"]
        click.echo(f"published: {_human(published.total)} total / {_human(published.active)} active "
                   f"({published.source}); ours with embeddings={published.active_embeddings}: "
                   f"{_human(pub['our_active_under_that_convention'])} active")
    click.echo(f"FLOPs per token (forward, multiply-add = 2, context {context_len}):")
    for phase, f in fl["by_phase"].items():
        click.echo(f"  {phase:<24} {_human(f):>8} {_exact(f):>17}")
    click.echo(f"  {'total':<24} {_human(fl['forward']):>8} {_exact(fl['forward']):>17}")
    shared = f", {spec.n_shared} shared of F={spec.shared_d_ff or spec.d_ff}" if spec.n_shared else ""
    click.echo(f"MoE layer: {spec.variant}, D={spec.d_model}, F={spec.d_ff}, E={spec.n_experts}, K={spec.top_k}"
               f"{shared}, {spec.score_func} scores, renormalize={spec.renormalize}, "
               f"routed_scaling={spec.routed_scaling}, groups {spec.topk_groups}/{spec.n_groups}, "
               f"expert_bias={spec.expert_bias}, dtype={spec.dtype}")


# --- compare --------------------------------------------------------------------------------------

@cli.command("compare")
@click.argument("runs", nargs=-1, metavar="[BASELINE CANDIDATE]")
@click.option("--against", "rev", metavar="GIT_REV", default=None,
              help="A/B mode: run the suite for GIT_REV and for the working tree here, interleaved.")
@click.option("--suite", default="ci", show_default=True, help="A/B mode: the suite both sides run.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="A/B mode: alternating rounds per side.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, callback=_check_threads,
              help="A/B mode: CPU threads per side (1 is steadiest on a shared runner).")
@click.option("--filter", "filters", multiple=True, metavar="EXPR", help="A/B mode: as for `moebench run`.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="A/B mode: where the layers run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, callback=_check_out_path,
              help="A/B mode: folder for every round's results and the merged baseline/candidate files "
                   "(default results/ab-DATE).")
@click.option("--inject-slowdown", type=click.FloatRange(min=0), default=0.0, hidden=True,
              help="TESTING HOOK: slow the candidate by this fraction (gate-quality experiments only).")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.10, show_default=True,
              help="Smallest slowdown (fraction) that can be called SLOW.")
@click.option("--alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Significance level of the Mann-Whitney test.")
@click.option("--metric", type=click.Choice(["auto", "latency_s", "cpu_s"]), default="auto", show_default=True,
              help="Per-step series judged; auto: CPU time where both runs recorded it, else wall time.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table",
              show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list counters that did not change.")
def compare_cmd(runs, rev, suite, rounds, threads, filters, device, out_dir, inject_slowdown, threshold, alpha,
                metric, fmt, show_all) -> None:
    """Verdicts per case: SLOW / FAST / SAME / AMBIGUOUS for latency, exact checks of counters,
    CHANGED when the code that ran differs, MISSING for a baseline case the candidate lacks (NEW: the
    other way round, informational).

    Exit 1 if anything is SLOW, CHANGED, FAILED or MISSING, or no case could be compared on timing;
    exit 2 if the runs are not comparable (the baseline has no finished case, suite, device...) or a
    results file holds a malformed record (named FILE:LINE)."""
    from datetime import datetime, timezone

    from moebench import compare
    from moebench.store import ResultsWriteError

    try:
        if rev is None:
            if len(runs) != 2:
                raise ValueError(f"compare takes BASELINE and CANDIDATE results files (got {len(runs)} paths), "
                                 "or --against GIT_REV")
            baseline, candidate = compare.load_run(runs[0]), compare.load_run(runs[1])
        else:
            if runs:
                raise ValueError("give either BASELINE CANDIDATE or --against GIT_REV, not both")
            from moebench.abtest import ABError, run_ab
            from moebench.runner import select_cases
            from moebench.suite import load_suite

            loaded = load_suite(suite, device=device)  # validated here, so bad input is exit 2 before any run
            select_cases(loaded.cases, tuple(filters))
            suite_path = loaded.path
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            out = Path(out_dir or f"results/ab-{stamp}")
            try:
                result = run_ab(Path.cwd(), rev, suite_path, out, rounds=rounds, threads=threads, device=device,
                                filters=tuple(filters), inject_slowdown=inject_slowdown,
                                log=lambda line: click.echo(line, err=True))
            except ABError as err:
                raise ValueError(str(err)) from None
            click.echo(f"merged results: {result.baseline_path} {result.candidate_path}", err=True)
            baseline, candidate = result.baseline, result.candidate
        verdicts = compare.compare_runs(baseline, candidate, threshold=threshold, alpha=alpha, metric=metric)
    except compare.NotComparable as err:
        click.echo(f"moebench: not comparable: {err}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except ResultsWriteError as err:  # A/B mode's merged files: a full disk is no regression
        click.echo(f"moebench: environment problem: {err}", err=True)
        sys.exit(EXIT_ENVIRONMENT)
    if fmt == "json":
        click.echo(compare.format_json(verdicts, threshold, alpha))
    elif fmt == "markdown":
        click.echo(compare.format_markdown(verdicts, threshold, alpha, everything=show_all))
    else:
        click.echo(compare.format_table(verdicts, everything=show_all))
    if compare.gate_failed(verdicts):
        sys.exit(EXIT_CASE_FAILED)


# --- report ---------------------------------------------------------------------------------------

@cli.command("report")
@click.argument("results", nargs=-1, required=True, metavar="RESULTS...")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default=None, callback=_check_out_path,
              help="HTML file to write; its PNGs go to NAME_files/ beside it. "
                   "Default: reports/<suite>-<date>.html.")
def report_cmd(results, out) -> None:
    """HTML report (figures + tables) of RESULTS: results .jsonl files or folders; several runs are
    shown side by side."""
    from moebench.report import make_report

    click.echo(f"report: {make_report(results, out)}")


# --- env ------------------------------------------------------------------------------------------

@cli.command("env")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, callback=_check_threads,
              help="Default: all cores.")
def env_cmd(device, threads) -> None:
    """Print what every result records about this machine (JSON)."""
    import json

    from moebench.measure.environment import capture_environment
    from moebench.runner import usable_cpus

    env = capture_environment(device, threads or usable_cpus())
    click.echo(json.dumps(env, indent=2, default=str))
    click.echo(f"native kernels: {env['native_kernels']}", err=True)  # readable lines; stdout stays JSON


# --- run ------------------------------------------------------------------------------------------

EXIT_CASE_FAILED = 1
EXIT_ENVIRONMENT = 3


@cli.command("run")
@click.argument("suite")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the layers run.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Override every case's dtype.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="results", show_default=True,
              callback=_check_out_path, help="Folder the results file (JSONL) is written to.")
@click.option("--resume", is_flag=True,
              help="Continue the newest earlier run of this suite on this --device in --out: skip its ok "
                   "cases, run the failed ones again. Refused (exit 2) if that run had another suite file, "
                   "--dtype or --threads, or if the suite's only runs there are on another device; with no "
                   "earlier run, a new run starts (and says so).")
@click.option("--filter", "filters", multiple=True, metavar="EXPR",
              help="Keep cases where key=value holds (or whose id contains EXPR); repeatable, all must match.")
@click.option("--threads", type=click.IntRange(min=1), default=None, callback=_check_threads,
              help="CPU threads for torch (default: all cores); recorded with the results.")
@click.option("--dry-run", is_flag=True, help="List the cases and their count; run nothing.")
def run_cmd(suite, device, dtype, out_dir, resume, filters, threads, dry_run) -> None:
    """Run SUITE (a bundled suite name or a path to a suite .yaml file)."""
    from moebench.runner import (
        EnvironmentProblem,
        RunOptions,
        RunStopped,
        check_device,
        run_suite,
        select_cases,
        stop_on_signals,
    )
    from moebench.store import ResultsWriteError
    from moebench.suite import load_suite

    loaded = load_suite(suite, overrides={"dtype": dtype} if dtype else None, device=device)
    options = RunOptions(device=device, out_dir=Path(out_dir), resume=resume, filters=tuple(filters),
                         threads=threads, dtype=dtype)
    cases = select_cases(loaded.cases, options.filters)  # bad input is exit 2 before the device is checked
    if dry_run:
        for case in cases:
            click.echo(case.case_id)
        click.echo(f"{len(cases)} cases in suite {loaded.name!r} ({loaded.path})")
        return
    try:
        check_device(device)
    except EnvironmentProblem as err:
        click.echo(f"moebench: environment problem: {err}", err=True)
        sys.exit(EXIT_ENVIRONMENT)

    started: dict = {}

    def announce(event: str, data: dict) -> None:
        if event == "start":  # sent once the cases are selected: bad input has been refused by then
            started.update(data)
            click.echo(f"suite {loaded.name}: {loaded.description} ({data['cases']} cases)", err=True)
            if resume:
                click.echo(f"--resume: continuing {data['path']}" if data["resumed"] else
                           f"--resume: no earlier run of {loaded.name} on {device} in {out_dir}; starting a new run",
                           err=True)

    try:
        with stop_on_signals():  # SIGINT / SIGTERM: exit 130 / 143, the worker reaped, no traceback
            summary = run_suite(loaded, options, on_event=announce)
    except RunStopped as stop:
        click.echo(f"moebench: {stop}: {_stopped_run(started)}", err=True)
        sys.exit(128 + stop.signum)
    except (EnvironmentProblem, ResultsWriteError) as err:  # the worker could not start, a full disk...
        click.echo(f"moebench: environment problem: {err}", err=True)
        sys.exit(EXIT_ENVIRONMENT)
    click.echo(summary_table(summary.records))
    if summary.skipped:
        click.echo(f"{summary.skipped} cases already finished ok in this run were skipped (--resume)")
    click.echo(f"results: {summary.path}")
    if summary.failed:
        click.echo(f"{len(summary.failed)} of {len(summary.records)} cases failed", err=True)
        sys.exit(EXIT_CASE_FAILED)


def _stopped_run(started: dict) -> str:
    """What a stopped run leaves: how many cases are recorded where, and how to go on."""
    from pathlib import Path

    from moebench.runner import settle_results

    if not started:
        return "nothing was recorded"
    recorded = settle_results(Path(started["path"]), started["case_ids"])
    total = started["cases"] + started["skipped"]
    return (f"{recorded} of {total} cases are recorded in {started['path']}; "
            "run the same command with --resume to continue")


def summary_table(records: list[dict]) -> str:
    """A plain-text table of the key numbers of each finished case."""
    header = f"{'case':<60} {'status':<8} {'latency ms':>11} {'tokens/s':>11} {'of ceiling':>10} {'drop':>7}"
    lines = [header, "-" * len(header)]

    def num(metrics: dict, key: str, fmt: str, scale: float = 1.0) -> str:
        value = metrics.get(key)
        return format(value * scale, fmt) if isinstance(value, (int, float)) else "-"

    for r in records:
        m = r.get("metrics", {})
        lines.append(f"{r['case_id'][:60]:<60} {r['status']:<8} {num(m, 'latency_s', '11.3f', 1e3)} "
                     f"{num(m, 'tokens_per_s', '11.0f')} {num(m, 'frac_of_ceiling', '10.1%')} "
                     f"{num(m, 'drop_rate', '7.2%')}")
    return "\n".join(lines)


def main() -> None:
    warnings.showwarning = _show_warning
    cli(prog_name="moebench")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. a torn line set aside) as one line on stderr, like the errors, without source lines."""
    click.echo(f"moebench: warning: {message}", err=True)


if __name__ == "__main__":
    main()
