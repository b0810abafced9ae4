"""The ``raytune-opt`` command line.

User errors (any :class:`RaytuneOptError`) print one line per problem on stderr and exit
with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from raytune_opt import objectives
from raytune_opt import __version__, registry, searchers, timeline
from raytune_opt.errors import RaytuneOptError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every user error
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


# Subcommands that read a spec and take key=value overrides on top of it.
TAKES_OVERRIDES = ("validate", "run", "submit")
# Why the others refuse them (an experiment runs with the spec it was started with).
NO_OVERRIDES = {
    "resume": "a sweep resumes with the spec it started with; start a new one with "
              "'raytune-opt run SPEC key=value ... name=NEW'",
    "promote": "promotion reads the experiment's own spec; choose artifacts with --targets",
    "report": "the report shows the experiment as it ran; write it elsewhere with --out",
}


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the sweep spec (YAML), e.g. search_spaces/digits_cnn.yaml")
    # A default makes argparse treat the list as optional: without one, 'run' alone says that
    # key=value is required too.
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="settings applied on top of the spec, anywhere on the line, e.g. search.num_samples=4 "
                        "train.epochs=2")


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse ``type``: a bad one is a one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; write e.g. 300") from None
    if not 0 < value < 1e7:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds above 0; write e.g. 300")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raytune-opt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"raytune-opt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("validate", help="check a spec and summarize its search space; starts nothing")
    _add_spec_args(v)
    v.add_argument("--local", action="store_true", help="also check that one trial fits on this machine")
    v.add_argument("--quiet", action="store_true", help="print only the summary, not the resolved spec")
    v.add_argument("--smoke", action="store_true", help="also load the data and push one batch of a sampled config "
                                                        "through the model (forward, backward, ONNX export)")
    v.add_argument("--smoke-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="--smoke's time limit; the user's code runs in a child process killed after it "
                        "(default: 300)")

    r = sub.add_parser("run", help="run a sweep, then promote its best trial")
    _add_spec_args(r)
    r.add_argument("--dry-run", action="store_true", help="every trial for a few batches on local Ray, one worker")
    r.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    r.add_argument("--storage", help="results directory or s3://BUCKET/PREFIX; overrides storage.path")
    r.add_argument("--verbose", action="store_true", help="Ray Tune's own progress tables instead of the compact view")

    pr = sub.add_parser("promote", help="export, quantize and build engines for an experiment's best trial")
    pr.add_argument("experiment", help="the directory 'raytune-opt run' wrote (STORAGE/NAME), or s3://BUCKET/PREFIX/NAME")
    pr.add_argument("--endpoint-url", help="S3-compatible endpoint of an s3:// experiment (default: "
                                           "$AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS)")
    pr.add_argument("--targets", help=f"comma-separated subset of {','.join(registry.PROMOTION_STEPS)} "
                                      f"and your own steps as module:callable (default: the spec's promote.targets)")
    pr.add_argument("--address", help="Ray cluster to build TensorRT engines on (default: $RAY_ADDRESS, else this "
                                      "machine if it has a GPU)")
    pr.add_argument("--trust-code", action="store_true",
                    help="import the model, data set or promotion step code (module:callable) the experiment's "
                         "files name, from where its sweep did: needed to promote your own model's experiment by "
                         "hand; without it only built-in models and data sets are rebuilt. It runs that code: use it only for "
                         "experiments you trust ('run' and 'resume' promote their own sweep without it)")

    rs = sub.add_parser("resume", help="continue an interrupted sweep, then promote its best trial",
                        description="Continue an interrupted sweep, then promote its best trial. Resume trusts the "
                                    "experiment: it imports the code its spec names and Ray unpickles its saved "
                                    "state, so resume only your own experiments.")
    rs.add_argument("experiment", help="the directory 'raytune-opt run' wrote (STORAGE/NAME), or s3://BUCKET/PREFIX/NAME")
    rs.add_argument("--endpoint-url", help="S3-compatible endpoint of an s3:// experiment (default: "
                                           "$AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS)")
    rs.add_argument("--restart-errored", action="store_true",
                    help="start errored trials from scratch (default: continue them from their last checkpoint)")
    rs.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")

    rp = sub.add_parser("report", help="write an experiment's report.html (also a running or resumed sweep's)")
    rp.add_argument("experiment", help="the directory 'raytune-opt run' wrote (STORAGE/NAME), or s3://BUCKET/PREFIX/NAME")
    rp.add_argument("--out", help="write the page here instead of EXPERIMENT/report.html")
    rp.add_argument("--open", action="store_true", help="open the page in the default web browser")
    rp.add_argument("--endpoint-url", help="S3-compatible endpoint of an s3:// experiment")

    sb = sub.add_parser("submit", help="run a sweep on a Ray cluster as a Ray job")
    _add_spec_args(sb)
    sb.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    sb.add_argument("--storage", help="results on the cluster: a directory shared by its nodes, or s3://BUCKET/PREFIX")
    sb.add_argument("--working-dir", default=".", help="uploaded with the job (default: .; never / or $HOME), less "
                                                       "secrets, VCS metadata, virtual envs, caches and outputs; the "
                                                       "spec path is relative to it")
    sb.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                    help="also leave out what this .gitignore-style pattern matches (repeatable); '!PATTERN' "
                         "puts a default exclusion back")
    sb.add_argument("--show-upload", action="store_true",
                    help="list every file that would be uploaded and what is left out and why; send nothing")
    sb.add_argument("--dry-run", action="store_true", help="submit a dry run")
    wait = sb.add_mutually_exclusive_group()
    wait.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    wait.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from raytune_opt.spec import load_spec

    spec = load_spec(args.spec, args.overrides, local=args.local)
    if not args.quiet:
        print(f"# resolved spec: {args.spec}")
        print(spec.to_yaml().rstrip())
        print()
    for line in space_summary(spec):
        print(line)
    if args.smoke:
        from raytune_opt.smoke import TIMEOUT_S, smoke

        smoke(spec, timeout=args.smoke_timeout or TIMEOUT_S)
    elif args.smoke_timeout is not None:
        raise UsageError(f"--smoke-timeout {args.smoke_timeout:g}: only --smoke runs the user's code; add --smoke "
                         "or leave the flag out")
    return 0


def space_summary(spec) -> list[str]:
    space = spec.space
    search = spec.data["search"]
    chosen = searchers.searcher_key(search["algorithm"], search["sampler"])
    n_cond = sum(1 for p in space.params if p.conditions)
    lines = [f"spec {spec.source}: OK (sha256 {spec.sha256()[:12]})",
             f"space: {len(space)} dimension(s), {n_cond} conditional, grid points: {space.grid_size()}"]
    lines += [f"  {line}" for line in space.summary()]
    trials = searchers.planned_trials(search, space)
    objs = objectives.objectives(search)
    lines.append(f"searchers that can take it: {', '.join(searchers.accepting(space, len(objs) > 1))}")
    said = ", ".join(f"{m} ({mode})" for m, mode in objs)
    planned = f"{trials} trial(s)" if trials is not None else "trials until the budget ends"
    lines.append(f"search: {chosen}, {'metrics' if len(objs) > 1 else 'metric'} {said}, {planned}; "
                 f"scheduler: {spec.data['scheduler']['name']}")
    from raytune_opt.budget import Limits

    limits = Limits.from_spec(spec.data)
    if limits.any:
        lines.append(f"budget: {limits.describe()}")
    if search.get("constraints"):
        lines.append("constraints: " + ", ".join(f"{k} {side} {b[side]:g}" for k, b in search["constraints"].items()
                                                 for side in ("min", "max") if side in b))
    if search.get("enqueue"):
        lines.append(f"enqueue: {len(search['enqueue'])} config(s) trained first")
    if search.get("warm_start"):
        from raytune_opt import warm_start

        learns = "" if warm_start.learns(search) else f" ({chosen} does not learn from them: they will be ignored)"
        lines.append(f"warm start: the finished trials of {', '.join(search['warm_start'])}, read when the sweep "
                     f"starts{learns}")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    from raytune_opt import ray_runtime, report
    from raytune_opt.spec import load_spec
    from raytune_opt.sweep import run_sweep

    local = ray_runtime.resolve_address(args.address) is None and not args.dry_run
    spec = load_spec(args.spec, args.overrides, local=local)
    mode = "dry run" if args.dry_run else "sweep"
    _say(f"raytune-opt {mode}: {args.spec} (spec sha256 {spec.sha256()[:12]})")
    outcome = run_sweep(spec, address=args.address, storage=args.storage, dry_run=args.dry_run,
                        verbose=1 if args.verbose else 0, live=not args.verbose, callbacks=report.callbacks)
    return _finish(outcome, spec, args.address)


def cmd_resume(args: argparse.Namespace) -> int:
    from raytune_opt.sweep import resume_sweep

    print(f"raytune-opt: resuming {args.experiment}", flush=True)
    # The report's refresh comes back with the sweep's own Tune callbacks (Tune's state holds them).
    outcome = resume_sweep(args.experiment, address=args.address, restart_errored=args.restart_errored,
                           endpoint_url=args.endpoint_url)
    return _finish(outcome, outcome.spec, args.address)


def cmd_report(args: argparse.Namespace) -> int:
    from raytune_opt.report import write_report

    path = write_report(args.experiment, args.out, endpoint_url=args.endpoint_url)
    print(f"report: {path}")
    if args.open:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            print(f"raytune-opt: no web browser found here; open {path.as_uri()} yourself", file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from raytune_opt import jobs
    from raytune_opt.spec import load_spec

    load_spec(args.spec, args.overrides)  # a bad spec fails here, not minutes later on the cluster
    return jobs.submit(args.spec, args.overrides, args.address, storage=args.storage, follow=args.follow,
                       no_wait=args.no_wait, working_dir=args.working_dir, dry_run=args.dry_run,
                       excludes=args.exclude, show_upload=args.show_upload)


def _finish(outcome, spec, address) -> int:
    """The report, the leaderboard, the best trial and, unless turned off, promotion."""
    from raytune_opt import report, results

    report.after_sweep(outcome.location)  # report.html and optuna.journal.log; warns, never fails the sweep
    search = spec.data["search"]
    print()
    print(results.leaderboard(outcome.rows, *objectives.primary(search)))
    _say(f"results: {outcome.where} (results.csv, best.json, history/, report.html) in {outcome.wall_seconds:.0f} s")
    if outcome.budget:
        from raytune_opt.budget import summary_line

        _say(summary_line(outcome.budget))
    if outcome.best is None:
        print("raytune-opt: no trial succeeded; see the error column of results.csv", file=sys.stderr)
        return 1
    b, (metric, _) = outcome.best, objectives.primary(search)
    _say(f"best: trial {b.trial_id} {metric}={b.best[metric]:.4f} (epoch {b.best.get('epoch')}), "
         f"checkpoint {b.checkpoint}")
    _say(_test_line(outcome.test, metric, b.best))
    if objectives.is_multi(search):
        _say("pareto front (the non-dominated feasible trials): pareto.csv")
    for line in results.config_lines(b.config):
        print(line)
    code = outcome.exit_code
    if spec.data["promote"]["enabled"]:
        print()
        # The sweep ran (or resumed) the code its spec names: its own promotion trusts it too.
        code = max(code, _promote(outcome.where, None, address, spec.data["storage"]["endpoint_url"],
                                  trust_code=True))
    _after_promotion(outcome)
    return code


def _test_line(test: dict | None, metric: str, best: dict) -> str:
    """The best trial on the test split beside its validation figure, or why there is none."""
    from raytune_opt.heldout import NO_TEST_SPLIT

    if not test:
        return f"test: {NO_TEST_SPLIT}"
    if "failed" in test:  # the warning above says why
        return "test: the best trial was not measured on the test split (see the warning above)"
    figures = test["metrics"]
    val = test.get("val") or best  # promote.select's trial has its own validation figures
    twin = "test_" + metric.removeprefix("val_")
    shown = [twin] if twin in figures else [k for k in ("test_accuracy", "test_rmse") if k in figures]
    pairs = ", ".join(f"{k}={figures[k]:.4f}" + (f" (val {val['val_' + k[5:]]:.4f})"
                                                  if isinstance(val.get("val_" + k[5:]), (int, float)) else "")
                      for k in shown)
    which = f" (trial {test['trial_id']}, promote.select's)" if test.get("selected_by") else ""
    # One line: why the two differ is the report's and the README's to say.
    return f"test: {pairs} on {test['samples']} samples no trial saw{which}"


def _after_promotion(outcome) -> None:
    from raytune_opt.report import after_promotion

    page = after_promotion(outcome)
    if page is not None:
        _say(f"report: {page}")


def cmd_promote(args: argparse.Namespace) -> int:
    from raytune_opt import storage

    storage.checked_endpoint(args.endpoint_url, "--endpoint-url")
    return _promote(args.experiment, args.targets, args.address, args.endpoint_url, trust_code=args.trust_code)


def _promote(exp_dir, targets, address, endpoint_url=None, *, trust_code: bool) -> int:
    """Promote, print the artifact table; 1 when an artifact failed (its manifest is written)."""
    from raytune_opt.promote import promote, table

    manifest = promote(exp_dir, targets, address, log=_say, endpoint_url=endpoint_url, trust_code=trust_code)
    print()
    print(table(manifest))
    where = str(exp_dir).rstrip("/") if str(exp_dir).startswith("s3://") else manifest["experiment"]
    _say(f"manifest: {where}/promotion/manifest.json")
    if manifest["status"] == "failed":
        failed = ", ".join(a["name"] for a in manifest["artifacts"] if a["status"] == "failed")
        print(f"raytune-opt: promotion failed ({failed}); see the reasons above and in the manifest", file=sys.stderr)
        return 1
    return 0


def _say(text: str) -> None:
    """Print ``text`` in lines of at most 80 columns, continuations indented, when its words
    allow; a line holding a path too long for that is printed whole (a path is never cut)."""
    import textwrap

    from raytune_opt.redact import redact

    text = redact(text)

    lines = textwrap.wrap(text, 80, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    if not lines or any(len(line) > 80 for line in lines):
        lines = [text]
    for line in lines:
        print(line, flush=True)


COMMANDS = {"validate": cmd_validate, "run": cmd_run, "promote": cmd_promote, "resume": cmd_resume,
            "submit": cmd_submit, "report": cmd_report}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere after the subcommand.

    argparse stops filling a positional list at the first flag (``validate SPEC --quiet
    name=x`` would leave ``name=x`` over), and ``parse_intermixed_args`` does not support
    subparsers. So the subcommand's leftovers are sorted here: words that are not flags are
    overrides, in the order given (a later one wins); flag values (``--storage /x``) were
    already taken by their flag. A leftover without ``=`` is reported by the override check
    ("an override must be key=value"), with every other spec problem.

    Raises:
        SystemExit: 2, with one line, for an unknown flag or an override given to a
            subcommand that takes none.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    flags = [a for a in extra if a.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    if extra and args.command not in TAKES_OVERRIDES:
        parser.error(f"{args.command} takes no key=value overrides (got {' '.join(extra)}); "
                     f"{NO_OVERRIDES[args.command]}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from raytune_opt.ray_runtime import no_telemetry

    no_telemetry()
    try:
        timeline.check()
        return COMMANDS[args.command](args)
    except RaytuneOptError as err:
        from raytune_opt.redact import redact

        for line in err.lines():
            print(redact(line), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raytune-opt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
