"""One party as one process: ``vfl party JOB.toml --role guest|host|arbiter``.

It opens its TLS links, runs its part of PSI, training and scoring through the
same workflow functions the in-process runner uses, writes its outputs under
``<workdir>/<its name>/`` (holding that folder's lock, :mod:`vfl.io.lock`, so a
second process of the same party is refused) and exits 0; on any failure it
prints a one-line reason and exits non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
from dataclasses import replace
from pathlib import Path

from vfl.io.lock import party_lock
from vfl.job.config import ConfigError, JobConfig, PartyConfig, load_job

log = logging.getLogger("vfl.party")


def resolve_name(job: JobConfig, role: str, name: str | None) -> str:
    """The party this process plays: the guest, the arbiter, or the named host. A ``name`` given for
    the guest or the arbiter must be theirs: a typo'd command must not run as another party."""
    if role in ("guest", "arbiter"):
        own = job.guest.name if role == "guest" else job.arbiter.name
        if name is not None and name != own:
            raise ConfigError(f"--name {name!r} is not the {role} of {job.path}: its {role} is {own!r}")
        return own
    if role != "host":
        raise ConfigError(f"role must be guest, host or arbiter, not {role!r}")
    if name is None:
        if len(job.hosts) != 1:
            raise ConfigError(f"this job has {len(job.hosts)} hosts: say which with --name "
                              f"({', '.join(job.host_names)})")
        return job.hosts[0].name
    if name not in job.host_names:
        raise ConfigError(f"no host named {name!r} in {job.path} (hosts: {', '.join(job.host_names)})")
    return name


def with_tls_dir(job: JobConfig, folder: Path) -> JobConfig:
    """The job with every party's certificate, key and the CA taken from ``folder``
    (as ``vfl certs`` writes them), for local runs of jobs that name none."""
    def party(p):
        return replace(p, cert=folder / f"{p.name}.pem", key=folder / f"{p.name}-key.pem")
    return replace(job, ca=folder / "ca.pem", arbiter=party(job.arbiter), guest=party(job.guest),
                   hosts=tuple(party(h) for h in job.hosts))


def check_backend(party: PartyConfig) -> None:
    """A party that asks for Ray must have it installed: say so in one line, before any work."""
    if party.ray_address is None:
        return
    spec = importlib.util.find_spec("ray")
    if spec is None:
        raise ConfigError(f"party {party.name!r} has ray_address = {party.ray_address!r} but Ray is not "
                          "installed here: pip install -e '.[ray]' (or remove ray_address to use the local "
                          "process pool)")
    if spec.origin is None:
        # only a folder named ray/ on sys.path (Ray's session dir /tmp/ray, for a party started from /tmp):
        # a namespace package, found when the real one is not installed, failing later with AttributeError
        where = ", ".join(spec.submodule_search_locations or []) or "a folder"
        raise ConfigError(f"party {party.name!r} has ray_address = {party.ray_address!r} but Ray is not "
                          f"installed here ('import ray' finds only the folder {where}, not the package): "
                          "pip install -e '.[ray]' (or remove ray_address to use the local process pool)")


def compute_backend(party: PartyConfig):
    """Context: this party's heavy loops on the backend its ``ray_address`` selects (default: local pool).

    Only the party process chooses; the roles in ``vfl/`` never know which backend runs.
    """
    check_backend(party)
    from crypto.backends import selected

    @contextlib.contextmanager
    def logged():
        with selected(party.ray_address) as backend:
            log.info("%s: heavy loops on %r", party.name, backend)
            yield backend
    return logged()


def shared_backend(job: JobConfig):
    """Context for in-process runs (every party a thread of this process): they share one backend,
    the Ray cluster a party names if any (all that name one must name the same), else the local pool."""
    from vfl.job.threads import backend_address
    address = backend_address(job)
    return compute_backend(next((p for p in job.parties if p.ray_address == address), job.guest))


def preflight(job: JobConfig, me: str, task: str = "train") -> None:
    """Check this party's own inputs before it opens the network, so that a missing or
    malformed data file (or a backend that cannot start here) fails at once and names the
    file, not as a lost link later."""
    from vfl.io.tables import check_columns
    party = job.party(me)
    check_backend(party)
    if party.role == "arbiter":
        return
    if task == "predict":
        path = party.predict_data or party.data
        label = None      # optional when scoring
    else:
        path, label = party.data, (party.label_column if task == "train" else None)
    check_columns(path, party.id_column, label, party.categorical_columns, party.encoding)


def run_party(job: JobConfig, role: str, name: str | None = None, task: str = "train",
              resume: bool = False) -> dict:
    """Run this party's part of ``task`` (see :mod:`vfl.job.tasks`): "train" (PSI, training,
    scoring), "psi" or "predict"."""
    me = resolve_name(job, role, name)
    preflight(job, me, task)             # before the slow imports and the network
    from vfl.job.tasks import task as task_named
    t = task_named(task)
    t.check_role(job, role)
    # this party's folder to itself until it ends: a second run of it is refused before it writes anything
    with party_lock(job.output_dir(me), me, task):
        if resume and task == "train":          # a changed party list: refused before the network and ledger
            from vfl.job.roles import check_resume_parties
            check_resume_parties(job, me)
        from vfl.protocol.ledger import record_refusal, spec_channel
        from .transport import prepare_channel
        absent = t.absent(job)
        options = {"task": task, "exclude": absent} if task != "train" else {}
        unopened = prepare_channel(job, me, **options)    # own certificate and key checked before anything slow
        # the party's own compute backend first: a Ray runtime takes seconds to start, and peers wait for links
        with compute_backend(job.party(me)), unopened.open() as tls:
            channel = spec_channel(tls, job, me, task, resume)     # the spec enforced, the ledger kept
            try:
                return t.run(job, me, channel, resume)   # hosts and the arbiter resume when the guest does
            except BaseException as exc:
                record_refusal(channel, exc)     # a role's refusal of a received message: into the ledger
                raise


JOB_HELP = "job file (TOML)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default shown after its help (``vfl`` and the party commands), when it has one worth
    showing: not a flag's False, nor None, which the help text explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def party_parser(role: str | None) -> argparse.ArgumentParser:
    """The arguments of ``python -m parties.<role>`` (``role`` given) and of ``vfl party``."""
    p = argparse.ArgumentParser(prog=f"python -m parties.{role}" if role else "vfl party",
                                description="Run one party of a job in this process.", formatter_class=HelpFormatter)
    p.add_argument("job", type=Path, help=JOB_HELP)
    if role is None:
        p.add_argument("--role", required=True, choices=["guest", "host", "arbiter"],
                       help="which part of the job this process plays")
    p.add_argument("--name", help="which host of the job (a guest's or arbiter's name is checked)")
    p.add_argument("--task", choices=["train", "psi", "predict"], default="train",
                   help="train: PSI, training and scoring; psi: the intersection only; "
                        "predict: score new rows with the saved model")
    p.add_argument("--resume", action="store_true",
                   help="(guest) continue an interrupted training from the last per-epoch checkpoints; "
                        "hosts and the arbiter follow the guest")
    p.add_argument("--tls-dir", type=Path,
                   help="take certificates from this folder (as written by `vfl certs`) instead of the job file")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


# The resource tracker's warnings about semaphores it unlinks after their process died (its -W options are
# this process's, sys.warnoptions, read when it starts).
RESOURCE_TRACKER_WARNINGS = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def quiet_resource_tracker() -> None:
    """Keep the party's multiprocessing resource tracker from warning of "leaked semaphore objects".

    The party's worker pool holds a few semaphores. When the party is ended before it can close its pool
    (Ctrl-C or SIGTERM of `vfl run`, whose launcher then kills the parties), its resource tracker, a
    separate process that outlives it, unlinks them, which is its job, and warned of it on the party's
    stderr in two lines each: it read as a bug of vfl. Nothing is left behind either way. Call before
    the party's first pooled work (the tracker starts with it); only the tracker's own warnings are
    ignored."""
    if RESOURCE_TRACKER_WARNINGS not in sys.warnoptions:
        sys.warnoptions.append(RESOURCE_TRACKER_WARNINGS)


def main_for_role(role: str | None, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m parties.<role>`` and of ``vfl party``."""
    args = party_parser(role).parse_args(argv)
    quiet_resource_tracker()
    role = role or args.role
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    try:
        job = load_job(args.job)
        if args.tls_dir is not None:
            job = with_tls_dir(job, args.tls_dir)
        run_party(job, role, args.name, args.task, args.resume)
    except KeyboardInterrupt:
        print(f"{role}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, then non-zero: the contract of a party process
        log.debug("failure", exc_info=True)
        print(f"{role} failed: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0
