"""The ``vfl`` command.

    vfl demo                      generate the credit-scoring demo and run it
    vfl psi JOB.toml              private set intersection, every party (guest, hosts) a process over TLS
    vfl run JOB.toml              PSI, training and evaluation, every party a process over TLS
    vfl predict JOB.toml          score new rows (predict_data) with the trained model parts
    vfl report JOB.toml           rebuild the reports (<workdir>/report.html, <workdir>/<host>/report.html)
    vfl audit JOB.toml            check the parties' ledgers against the protocol spec; what each learned
    vfl party JOB.toml --role R   one party (guest, host or arbiter) in this process
    vfl serve JOB.toml --name P   one party's online scoring service (the guest's HTTP API, a host, or
                                  the arbiter when the hosts' weights are encrypted)
    vfl certs JOB.toml --out DIR  a CA and a key/certificate per party, for demos and tests
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from parties.launcher import Terminated
from parties.party import JOB_HELP, HelpFormatter
from vfl.job.config import ConfigError, load_job
from vfl.io.tables import DataError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)-14s %(message)s", datefmt="%H:%M:%S")


def cmd_psi(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    t0 = time.perf_counter()
    if args.threads:
        from parties.party import shared_backend
        from vfl.job.threads import run_psi_local
        with shared_backend(job):
            run_psi_local(job)
    else:
        _processes(job, "psi")
    from vfl.job.tasks import task
    files = [job.output_dir(n) / "intersection.csv" for n in task("psi").names(job)]
    with files[0].open(newline="", encoding="utf-8") as f:
        n_common = sum(1 for _ in csv.reader(f)) - 1          # less the header
    print(f"{n_common} common IDs in {time.perf_counter() - t0:.1f} s; written to "
          + ", ".join(str(f) for f in files))
    return 0


def _processes(job, task: str, resume: bool = False) -> None:
    from parties.launcher import local_tls, run_processes
    tls_dir = local_tls(job)
    if tls_dir is not None:
        print(f"note: the job file names no certificates; using a fresh local CA in {tls_dir}",
              file=sys.stderr)
    run_processes(job, task=task, tls_dir=tls_dir, resume=resume)


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    if args.threads:
        from parties.party import shared_backend
        from vfl.job.threads import run_local
        with shared_backend(job):
            run_local(job, resume=args.resume)
    else:
        _processes(job, "train", args.resume)
    metrics = json.loads((job.workdir / "metrics.json").read_text())
    print(json.dumps({k: metrics[k] for k in ("aligned_rows", "train", "test", "stage_seconds")}, indent=2))
    print(f"metrics: {job.workdir / 'metrics.json'}", file=sys.stderr)     # stdout: the JSON alone
    _print_reports(job)
    return 0


def _print_reports(job) -> None:
    """Where the validation reports are, on stderr: the guest's, then each host's (where written here)."""
    reports = [(job.guest.name, job.workdir / "report.html")] + [(h, job.output_dir(h) / "report.html")
                                                                   for h in job.host_names]
    for name, path in reports:
        if path.is_file():
            print(f"report ({name}): {path}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    if args.threads:
        from parties.party import shared_backend
        from vfl.job.threads import run_predict_local
        with shared_backend(job):
            run_predict_local(job)
    else:
        _processes(job, "predict")
    report = json.loads((job.workdir / "predict_metrics.json").read_text())
    print(json.dumps({k: v for k, v in report.items() if k not in ("gains", "evaluation", "stability")}, indent=2))
    score_psi = (report.get("stability") or {}).get("score")
    if score_psi:
        print(f"score PSI against the training rows: {score_psi['psi']:.4f} ({score_psi['flag']})", file=sys.stderr)
    print(f"scores: {job.output_dir(job.guest.name) / 'scores.csv'}", file=sys.stderr)
    if report.get("cohort"):
        print(f"cohort kept: {job.workdir / 'cohorts' / report['cohort']}", file=sys.stderr)
    _print_reports(job)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vfl.evaluation.host_report import write_host_report
    from vfl.evaluation.report import write_report
    job = load_job(args.job)
    paths = []
    if (job.workdir / "metrics.json").is_file():
        paths.append(write_report(job))
    for h in job.host_names:                 # each host's own report, where its results are on this machine
        if (job.output_dir(h) / "report.json").is_file():
            paths.append(write_host_report(job, h))
    if not paths:
        print(f"error: no {job.workdir / 'metrics.json'} nor any host's report.json: run the job first "
              f"(`vfl run {job.path}`)", file=sys.stderr)
        return 1
    for p in paths:
        print(f"report: {p}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from vfl.protocol.audit import audit_job
    ok, text = audit_job(load_job(args.job))
    print(text)
    return 0 if ok else 1


def cmd_party(args: argparse.Namespace) -> int:
    from parties.party import main_for_role
    rest = [str(args.job), "--role", args.role, "--task", args.task] + (["--name", args.name] if args.name else [])
    rest += ["--resume"] if args.resume else []
    return main_for_role(None, rest + (["-v"] if args.verbose else []))


def cmd_serve(args: argparse.Namespace) -> int:
    from parties.party import with_tls_dir
    from parties.serve_http import serve
    job = load_job(args.job)
    name = args.name or job.guest.name
    if name == job.guest.name:            # its HTTP API needs the [serve] extra; a host's service does not
        from parties.demo import check_serving_installed
        check_serving_installed(f"vfl serve --name {name} (the guest's HTTP API)")
    if args.tls_dir is not None:
        job = with_tls_dir(job, args.tls_dir)
    try:
        serve(job, name)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    """Print the serving audit lines whose request included an ID: who asked about this person, when,
    and what they got (a subject-access or incident question), from one party's own log and key."""
    from parties.serve import audit_path
    from vfl.serving.audit import find_requests
    job = load_job(args.job)
    name = args.name or job.guest.name
    if name not in {p.name for p in job.parties} - {job.arbiter.name}:
        raise ConfigError(f"--name {name!r} is not the guest or a host of {args.job}")
    found = find_requests(audit_path(job, name), job.name, args.id)
    for line in found:                       # "time" as logged (seconds since the epoch) and as a reader reads it
        t = line.get("time")
        when = datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") \
            if isinstance(t, (int, float)) and math.isfinite(t) else None
        print(json.dumps({**{k: v for k, v in line.items() if k != "ids"}, "utc": when}, sort_keys=True))
    print(f"{len(found)} request(s) in {audit_path(job, name)} included {args.id!r}", file=sys.stderr)
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from parties.certs import make_certs
    job = load_job(args.job)
    if (args.out / "ca-key.pem").exists() and not args.force:
        raise ConfigError(f"{args.out} already holds a CA (ca-key.pem): certificates it signed would stop "
                          "verifying. Choose another --out, or pass --force to replace it")
    made = make_certs(job, args.out)
    print(f"CA and {len(made)} party certificates written to {args.out}. Reference them in the job file:")
    print(f'[tls]\nca = "{args.out.resolve() / "ca.pem"}"')
    for name, (cert, key) in made.items():
        print(f'# in the table of {name}:\ncert = "{cert.resolve()}"\nkey = "{key.resolve()}"')
    print(f"warning: {args.out / 'ca-key.pem'} can issue any party's certificate: keep it with whoever runs the "
          "CA and give each party only ca.pem and its own NAME.pem and NAME-key.pem", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from parties.demo import run_demo
    return run_demo(Path(args.workdir), n_people=args.people, key_bits=args.key_bits, epochs=args.epochs,
                    model=args.model, serve=args.serve)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"vfl {version('vfl')}"
    except PackageNotFoundError:          # run from a source tree that was never installed
        return "vfl (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfl", description="Privacy-preserving vertical federated learning.",
                                formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do (`vfl COMMAND --help` for its arguments):")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)

    s = command("psi", help="private set intersection of the parties' IDs")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("--threads", action="store_true",
                   help="run the parties as threads of this process (no TLS) instead of processes")
    s.set_defaults(func=cmd_psi)

    s = command("run", help="run a whole job (PSI, training, evaluation) on this machine")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("--threads", action="store_true",
                   help="run all parties as threads of this process (no TLS) instead of processes")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted training from the parties' last per-epoch checkpoints")
    s.set_defaults(func=cmd_run)

    s = command("predict", help="score new rows jointly with the trained model (guest and hosts)")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("--threads", action="store_true", help="run the parties as threads of this process")
    s.set_defaults(func=cmd_predict)

    s = command("report", help="rebuild the guest's and each host's report.html from their saved results")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.set_defaults(func=cmd_report)

    s = command("audit", help="verify the parties' ledgers against the protocol spec and print what "
                              "each party received in the clear")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.set_defaults(func=cmd_audit)

    s = command("party", help="run one party of a job in this process")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("--role", required=True, choices=["guest", "host", "arbiter"],
                   help="which part of the job this process plays")
    s.add_argument("--name", help="which host (when the job has several); for the guest or the arbiter, "
                                   "checked against the job file")
    s.add_argument("--task", choices=["train", "psi", "predict"], default="train",
                   help="train: PSI, training and scoring; psi: the intersection only; predict: score new rows "
                        "with the saved model")
    s.add_argument("--resume", action="store_true", help="continue from this party's last checkpoint")
    s.set_defaults(func=cmd_party)

    s = command("serve", help="run one party's online scoring service (guest: HTTP API; host: its "
                              "partial scores for the guest; arbiter, only with host_weights = \"encrypted\": "
                              "decrypts the guest's masked sums), until interrupted")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("--name", help="which party (default: the guest)")
    s.add_argument("--tls-dir", type=Path,
                   help="take certificates from this folder (as written by `vfl certs`) instead of the job file")
    s.set_defaults(func=cmd_serve)

    s = command("requests", help="list the online-scoring requests that included an ID, from one "
                                 "party's serving audit log (its own key matches the hashed IDs)")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("id", help="the ID to look for, as the clients sent it")
    s.add_argument("--name", help="whose log (default: the guest)")
    s.set_defaults(func=cmd_requests)

    s = command("certs", help="create a CA and a key/certificate for every party (demos, tests)")
    s.add_argument("job", type=Path, help=JOB_HELP)
    s.add_argument("--out", type=Path, required=True,
                   help="folder for the CA (ca.pem, ca-key.pem) and each party's NAME.pem and NAME-key.pem")
    s.add_argument("--force", action="store_true", help="replace a CA already in --out")
    s.set_defaults(func=cmd_certs)

    s = command("demo", help="generate and run the credit-scoring demo (bank + e-commerce)")
    s.add_argument("--workdir", default="runs/credit-demo", help="where data, job file and results go")
    s.add_argument("--people", type=int, default=10_000, help="size of the synthetic population (at least 1000)")
    s.add_argument("--key-bits", type=int, default=2048, help="Paillier key size")
    s.add_argument("--epochs", type=int, default=None, help=">= 1; default: 10 (logistic), 16 (embedding, fixed: its "
                   "host's weights stay encrypted); secureboost: the number of trees (10)")
    s.add_argument("--model", choices=["logistic", "embedding", "secureboost"], default="logistic",
                   help="logistic: split LR on the shop's behaviour columns; embedding: the shop's merchants, "
                        "cities, devices, categories and their crosses in a wide tower whose weights stay "
                        "encrypted, beside the bank's embedding tower; secureboost: gradient-boosted "
                        "trees on both parties' columns, beside LR")
    s.add_argument("--serve", action="store_true",
                   help="then start the shop's and the bank's online scoring services (vfl serve) and score "
                        "a few applicants over HTTP (needs pip install -e '.[serve]')")
    s.set_defaults(func=cmd_demo)
    return p


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted training: the parties' checkpoints are kept."""
    if args.func is not cmd_run:
        return ""
    try:
        secureboost = load_job(args.job).model.type == "secureboost"
    except Exception:               # the hint must never hide the interruption
        secureboost = False
    if secureboost:                 # no checkpoints: a rerun (with or without --resume) starts over
        return f"; SecureBoost keeps no checkpoints: vfl run {args.job} trains again from the first tree"
    return f"; continue with: vfl run --resume{' --threads' if args.threads else ''} {args.job}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:       # Ctrl-C: the launcher has ended the party processes
        print("interrupted" + _resume_hint(args), file=sys.stderr)
        return 130
    except Terminated as exc:       # SIGTERM / SIGHUP of `vfl run`: likewise
        print(str(exc) + _resume_hint(args), file=sys.stderr)
        return 128 + exc.signum
    except (ConfigError, DataError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:          # a file or folder that is missing, unwritable, ...: one line, no traceback
        what = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        print(f"error: {what or type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
