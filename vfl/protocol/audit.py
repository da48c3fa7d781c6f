"""``vfl audit JOB.toml``: check the parties' ledgers and say what each party learned.

For every party of the job whose ``<workdir>/<party>/ledger.jsonl`` is present
it verifies the hash chain, that every line is a message the spec declares
between those roles with a payload of the declared kind and class (in a run
opened for this job and a known task; the last training and every run after it
with the job's parties, an earlier run, as a retraining with a host removed
leaves, with the parties its own ``open`` line records, the ledger of a party no
longer in the job read and cross-checked when present), that a control payload
stays within its step's ceiling (public sizes: no control step carries
anything per row), that every message a party recorded as received was
recorded as sent by its peer (when the peer's ledger is present too) with the
same payload hash and the same description (kind, dtype, shape, values, bytes,
rows ...), in the order sent, and that every message a party recorded as sent
its peer recorded as received: only the last sends of a run that ended in
failure by a record the receiver could not write (the sender's own ledger, or a
third party's failed run at the time) are excused, so a party cannot cut lines
off the end of its own ledger unseen, not even by appending a ``failed`` line.
A party of the job with no ledger for runs the others recorded fails the audit,
and so does any plaintext aggregate with a row count under the job's
``min_rows_per_release`` (a release must record its rows), or a party's own
report of a smaller release. It then prints, per party, what it received by
payload class (messages, values, bytes, and the smallest number of rows behind
any plaintext aggregate), and the label-DP epsilon spent when the arbiter's
``training.json`` reports it. SecureBoost's per-node, per-bin host sums
(``sbt/t<t>/l<d>/enc_hist``) have no row minimum by design (docs/protocols.md,
2a): the guest's ledger gives, in a ``rows`` line after each one it decrypted,
the fewest rows behind a non-empty sum, and the report prints the smallest on a
line of its own, not as a floored release.
With label-DP on, every release a party received in the last training run
must be one the arbiter reports having noised: the guarantee covers a host's
whole view only if the guest's releases are noised as well as the hosts'
(docs/protocols.md, section 2, "Releases"); the noise it reports drawing must be
at least what the job's (epsilon, delta, epochs, hosts, guest share) plan asks
for, the epsilon it implies over the epochs noised (an epoch re-run after an
interruption counts again, as the parties' ledgers show) at most the job's, and
so must be the epsilon of every training the ledgers show together (each run
without --resume is a training of its own on the same labels). A host must get
one noised WOE message per training: a resume resends the first run's noised
counts, so a second, different one in the same training fails as noise reused. And once the guest of a training run
has the hosts' scores of the aligned rows it sends no host anything: its refit on
exact labels comes after, outside the guarantee, and must stay with the guest. That is judged
from the guest's record of receiving the scores and from each host's: nothing may reach a host
from the guest after it has sent its scores (the guest's own ledger could leave the receipt out).
Ledgers cut back alike agree with one another, so the audit also ties them to what the job wrote:
an empty ledger, or one with no ``open`` line, is no ledger of an honest run; the last training's
``open`` line must record the job file's settings digest (another run's whole set of ledgers
agrees with itself too); and the epochs the arbiter's training.json and each host's report.json
say ran must show releases in the ledgers' last training. A binning step whose rows are a host's
smallest bin must reach ``[preprocess] min_bin_rows`` as well as the release floor.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from .ledger import GENESIS, LEDGER_FILE, job_sizes, line_hash
from .spec import (AGGREGATE, BLINDED, CIPHERTEXTS, CLASSES, CLEAR, CONTROL, DECLARES, POSITIONS, PUBLIC, RELEASE,
                   ROLES, ROWS_EVENT, TASK_PHASES, UNFLOORED, SpecViolation, StepSpec, check_size, find,
                   public_sizes)

# In a training run the guest learns the hosts' summed scores of the aligned rows here, then refits
# its own part on exact labels (docs/protocols.md, "The guest's refit"): it may send hosts nothing after.
SCORED_STEP = "predict/u_h_share"
# host_weights = "encrypted": the hosts' scores of the aligned rows go to the guest as ciphertexts here
ENCRYPTED_SCORED_STEP = "predict/enc_u"
# host_weights = "encrypted": what a host may receive; anything else (a release, a masked value, a share) would
# be a decrypted value, which such a host must never get (docs/protocols.md, "Hosts with encrypted weights")
ENCRYPTED_HOST_CLASSES = (PUBLIC, CONTROL, CIPHERTEXTS, BLINDED, POSITIONS)
# What the sender's and the receiver's line of one message must agree on besides step and payload hash:
# a party that understates what it received (fewer values, another kind) is caught by its peer's line.
DESCRIPTOR = ("kind", "dtype", "shape", "values", "bytes", "frac_bits", "class", "columns", "cells")
UNPAIRED_RECEIPT = 1_000_000      # the pairing's cost of a receipt in a receiver's run left without a sender's run
# The tables of the job's shared settings (vfl.job.fingerprint.SECTIONS) that make what a training
# exchanges: its last training must have run with the job file's. [scorecard] only scales points after
# the model is fit, and may be edited after training (`vfl predict` then warns): it is left out.
TRAINING_SETTINGS = ("job", "parties", "model", "preprocess")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class ClassStats:
    messages: int = 0
    values: int = 0
    bytes: int = 0
    min_rows: int | None = None
    without_rows: int = 0        # releases whose rows the ledger does not record (not on the wire)
    uncounted: int = 0           # aggregates that are not sums over rows (SecureBoost's split counts)

    def add(self, entry: dict, rows_kind: str | None = None) -> None:
        """Count a received line of a step whose spec counts its rows as ``rows_kind``; an aggregate
        with no row minimum by design (UNFLOORED) has its rows counted apart (:class:`UnflooredStats`)."""
        self.messages += 1
        self.values += int(entry.get("values") or 0)
        self.bytes += int(entry.get("bytes") or 0)
        if entry.get("class") == AGGREGATE and entry.get("values") and rows_kind != UNFLOORED:
            rows = entry.get("rows")
            if _is_int(rows):
                self.min_rows = rows if self.min_rows is None else min(self.min_rows, rows)
            elif rows_kind is None:          # the spec counts no rows: not a sum over rows
                self.uncounted += 1
            else:
                self.without_rows += 1


@dataclass
class UnflooredStats:
    """Received aggregates with no row minimum by design (spec rows UNFLOORED: SecureBoost's enc_hist),
    and the fewest rows behind a non-empty sum as the receiver's ``rows`` lines give them."""

    messages: int = 0
    counted: int = 0             # those a ``rows`` line follows
    min_rows: int | None = None
    steps: set = field(default_factory=set)     # their spec names

    def line(self) -> str:
        """The audit report's line: the smallest count, and that no floor applies, by design."""
        text = (f"    of these, per-bin sums with no row minimum ({', '.join(sorted(self.steps))}): "
                f"{self.messages} messages")
        if self.min_rows is not None:
            text += f"; smallest non-empty bin: {self.min_rows} row{'s' * (self.min_rows != 1)}"
        if self.counted < self.messages:
            text += (f"; {self.messages - self.counted} without a count (not decrypted, as a tree halted by early "
                     "stopping, or recorded before vfl counted them)")
        return text + ("; no floor by design: SecureBoost's guest learns every summed node's per-bin sums, as "
                       "FATE's does (docs/protocols.md, 2a, \"What each party learns in total\")")


@dataclass
class Msg:
    """One message line: what the other party's line of the same message must match."""

    step: str
    digest: str | None
    where: str
    desc: dict                     # DESCRIPTOR fields as recorded
    rows: object = None
    noted: bool = False            # its rows are the receiver's own count (a release): the sender records none


@dataclass
class Run:
    """One run of a ledger (from its ``open`` line): what it sent and received, per peer, in order."""

    task: str | None
    resume: bool = False
    failed: bool = False           # a failed send/receive, a refusal, or a later resume shows it ended in failure
    sent: dict = field(default_factory=dict)    # peer -> [Msg]
    got: dict = field(default_factory=dict)     # peer -> [Msg]
    scored: bool = False           # in a training run, the hosts' scores of the aligned rows (SCORED_STEP)
                                   # have reached the guest: the guest received them, or this host sent them
    declared: dict = field(default_factory=dict)   # peer -> columns and cells the link's host declared
    uncounted: dict = field(default_factory=dict)  # (peer, step) -> an UNFLOORED aggregate awaiting its rows line
    start: float | None = None     # time of its first and last line (the "t" the ledger writes)
    end: float | None = None


@dataclass
class Training:
    """One training as one ledger shows it: a fresh run and the resumed runs that continue it."""

    epochs: list = field(default_factory=list)     # per run, the epochs it received releases in
    woe: dict = field(default_factory=dict)        # distinct woe/host_woe payloads received: sha256 -> where
    binned_columns: int = 0                        # columns this host binned (its woe/columns)
    plan: tuple[float, float] | None = None        # its (rho per epoch run, binning rho) as its open line says

    @property
    def epoch_runs(self) -> int:
        """Epoch runs with a release: an epoch re-run after a resume counts again."""
        return sum(len(e) for e in self.epochs)

    @property
    def binned(self) -> bool:
        return bool(self.woe) or self.binned_columns > 0


def task_roles(task: str | None) -> tuple[str, ...]:
    """Roles taking part in ``task`` (every role for a task the task table does not know)."""
    from ..job.tasks import TASKS        # late: vfl.job imports this package
    t = TASKS.get(task) if isinstance(task, str) else None
    return t.roles if t is not None else ROLES


@dataclass
class PartyLedger:
    name: str
    role: str
    path: Path
    lines: int = 0
    received: dict = field(default_factory=dict)       # class -> ClassStats
    unfloored: UnflooredStats = field(default_factory=UnflooredStats)
    sent_messages: int = 0
    sent_bytes: int = 0
    sent: dict = field(default_factory=lambda: defaultdict(deque))   # (peer, step, sha256) -> deque of Msg
    got: list = field(default_factory=list)            # (peer, Msg), in order
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)          # checks that could not be made (older ledgers)
    releases: int = 0                                  # non-empty released sums received, last training run
    former: bool = False                               # no party of the job: its ledger holds earlier runs only
    other_runs: list = field(default_factory=list)     # (where, parties) of each earlier run with other parties
    trainings: list = field(default_factory=list)      # Training, one per fresh training (with its resumes)
    run_log: list = field(default_factory=list)        # Run, one per "open" line
    last_training_open: tuple | None = None            # (where, entry) of the last "open" line of a training

    @property
    def runs(self) -> list:
        """The task of each run, in order."""
        return [run.task for run in self.run_log]

    @property
    def release_epochs(self) -> list:
        """Per run of the last training (resumes included), the epochs it received releases in."""
        return self.trainings[-1].epochs if self.trainings else []

    @property
    def binning_releases(self) -> dict:
        """Distinct woe/host_woe payloads received in the last training."""
        return self.trainings[-1].woe if self.trainings else {}

    @property
    def binned_columns(self) -> int:
        """Columns a host binned (its woe/columns) in the last training."""
        return self.trainings[-1].binned_columns if self.trainings else 0


def read_ledger(path: Path, name: str, roles: dict[str, str], min_release_rows: int | None = None,
                job_name: str | None = None, sizes: dict[str, int] | None = None,
                former_role: str | None = None, min_bin_rows: int | None = None,
                settings: dict[str, str] | None = None) -> PartyLedger:
    """Parse and verify one party's ledger (chain, spec, own name and role, every run opened for this
    job, ``job_name`` when given); with ``min_release_rows``, also that no plaintext aggregate stands
    on fewer rows; ``sizes``: the job's public sizes for control ceilings (by default the largest the
    settings allow). The last training (its fresh run, and every run after it) must be opened with the
    job's parties ``roles``; a run before it may record other parties (a retraining in the same workdir
    with a party removed or added) and is checked against the parties its own ``open`` line records.
    ``former_role``: the ledger of a party that is no party of the job (a removed host), with the role
    the others' runs gave it: every run of it is such an earlier run. ``min_bin_rows``: the job's
    ``[preprocess]`` floor on a bin, for the binning steps whose rows are a host's smallest bin;
    ``settings``: the digests of the job's shared settings by table
    (:func:`vfl.job.fingerprint.section_digests`), which the last training's ``open`` line must record
    for the tables of :data:`TRAINING_SETTINGS`. A ledger that can not be read, or holds no ``open`` line (an
    empty file: no honest run leaves one, its channel writes ``open`` first), is a problem, not a pass."""
    led = PartyLedger(name, former_role or roles[name], path, former=former_role is not None)
    try:
        _read_lines(led, roles, min_release_rows, job_name, sizes, min_bin_rows)
    except OSError as exc:             # a permission or I/O error: one line, not a traceback
        led.problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
        return led
    if not led.run_log and not led.problems:
        led.problems.append(f"{path}: {'empty' if led.lines == 0 else 'no line opens a run'}, with no 'open' line "
                            "and so no run: a party's channel writes 'open' before anything else, so the ledger "
                            "was truncated or replaced")
    if not led.former:
        _check_settings(led, settings)
    return led


def _read_lines(led: PartyLedger, roles: dict[str, str], min_release_rows: int | None, job_name: str | None,
                sizes: dict[str, int] | None, min_bin_rows: int | None) -> None:
    """Read ``led.path`` line by line into ``led`` (see :func:`read_ledger`); stops at a line that is not
    JSON or breaks the chain, since nothing after it can be trusted."""
    path = led.path
    sizes = job_sizes_ = sizes if sizes is not None else public_sizes(roles)
    prev, seq, task = GENESIS, None, None
    run_roles = roles
    strict_from = None if led.former else _last_training_line(path)
    with path.open("rb") as f:           # bytes: a line that is not UTF-8 is named like any other bad line
        for no, raw in enumerate(f, 1):
            led.lines = no
            where = f"{path}:{no}"
            try:
                entry = json.loads(raw.decode("utf-8"))
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                led.problems.append(f"{where}: not a ledger line ({exc})")
                return
            if entry.get("prev") != prev or entry.get("hash") != line_hash(prev, entry):
                led.problems.append(f"{where}: hash chain broken (the line or one before it was changed, "
                                    "inserted or removed)")
                return
            prev = entry["hash"]
            if seq is not None and entry.get("seq") != seq + 1:
                led.problems.append(f"{where}: sequence number {entry.get('seq')} after {seq}")
            seq = entry.get("seq") if isinstance(entry.get("seq"), int) else seq
            t = entry.get("t") if isinstance(entry.get("t"), (int, float)) else None
            event = entry.get("event")
            if event == "open":
                task = entry.get("task")
                if task == "train" and entry.get("resume"):     # the training it resumes was interrupted
                    for run in reversed(led.run_log):
                        if run.task == "train":
                            run.failed = True
                            break
                led.run_log.append(Run(task, bool(entry.get("resume")), start=t, end=t))
                if task == "train":
                    led.last_training_open = (where, entry)
                strict = strict_from is not None and no >= strict_from
                run_roles = _check_open(led, entry, where, roles, job_name, strict=strict)
                run_job = job_sizes_ if run_roles is roles else {**job_sizes_, **{
                    k: v for k, v in public_sizes(run_roles).items() if k in ("hosts", "names")}}
                sizes = _run_sizes(entry.get("sizes"), run_job, run_roles, strict)
                if task == "train":      # a fresh training starts a new count; a resumed one continues it
                    led.releases = 0
                    if entry.get("resume") and led.trainings:
                        led.trainings[-1].epochs.append(set())
                    else:
                        led.trainings.append(Training([set()], plan=_recorded_plan(entry.get("dp_plan"))))
                continue
            if not led.run_log:
                # no run says which job, parties and task these lines belong to: the phase checks need it
                led.problems.append(f"{where}: a {event!r} line before the ledger's first 'open' line")
                continue
            if t is not None:
                led.run_log[-1].end = t
            if event == "failed":
                led.run_log[-1].failed = True
                continue
            if event == ROWS_EVENT:
                _check_rows_line(led, entry, where)
                continue
            if event != "message":
                led.problems.append(f"{where}: unknown event {event!r}")
                continue
            _check_message(led, entry, where, run_roles, task, min_release_rows, sizes, min_bin_rows)


def _check_settings(led: PartyLedger, settings: dict[str, str] | None) -> None:
    """The last training's ``open`` line must record the audited job's settings digests (the tables of
    :data:`TRAINING_SETTINGS`): a whole set of ledgers from another run of a job with the same name
    (other settings, other parties' columns) agrees with itself and passes every other rule. A ledger
    written before vfl recorded them is still read, with a note that this could not be checked."""
    if settings is None or led.last_training_open is None:
        return
    where, entry = led.last_training_open
    if "settings" not in entry:
        led.notes.append(f"{where}: the last training's open line records no settings digest (a ledger from an "
                         "older version): not checked that it ran with this job file's settings")
        return
    recorded = entry["settings"] if isinstance(entry["settings"], dict) else {}
    differ = [t for t in TRAINING_SETTINGS if recorded.get(t) != settings.get(t)]
    if differ:
        led.problems.append(f"{where}: the last training was opened for another job's settings (its "
                            f"{', '.join(f'[{t}]' for t in differ)} differ from the job file's): these ledgers "
                            "are not of this job's last training")


def _last_training_line(path: Path) -> int:
    """The line of the ledger's last training's fresh ``open`` (the last fresh run's when it has no
    training; 1 for none): from there on every run must have the job file's parties."""
    last, fresh = None, None
    with path.open("rb") as f:
        for no, raw in enumerate(f, 1):
            if b'"open"' not in raw:
                continue
            try:
                entry = json.loads(raw.decode("utf-8"))
            except ValueError:
                break                  # read_ledger names it
            if not isinstance(entry, dict) or entry.get("event") != "open" or entry.get("resume"):
                continue
            fresh = no
            if entry.get("task") == "train":
                last = no
    return last or fresh or 1


def _party_set_problem(recorded, led: PartyLedger) -> str | None:
    """What makes the parties an earlier run's ``open`` line records no party set of a job (None when
    they are one): names mapped to roles, one guest, at most one arbiter, this party in its role."""
    if not (isinstance(recorded, dict) and recorded
            and all(isinstance(n, str) and n and r in ROLES for n, r in recorded.items())):
        return "not a mapping of party names to roles"
    kinds = list(recorded.values())
    if kinds.count("guest") != 1 or kinds.count("arbiter") > 1 or "host" not in kinds:
        return "not one guest, hosts and at most one arbiter"
    if recorded.get(led.name) != led.role:
        return f"without {led.name!r} as {led.role!r}"
    return None


def _run_sizes(recorded, job: dict[str, int], roles: dict, strict: bool = False) -> dict[str, int]:
    """The public sizes a run's control ceilings are checked in: those its ``open`` line records (the
    job's settings when it ran: a training retrained in the same workdir with a smaller key was judged
    by the later key and called broken), if they are whole numbers for the same parties, each within
    what the settings allow at most; else the job's as it is now. In the last training and the runs
    after it (``strict``), which ran with the job file's settings, at most the job's own sizes: an
    ``open`` line recording a larger key would loosen every ceiling of the run, and the peer's ledger,
    which records its own, may be forged alike."""
    most = job if strict else public_sizes(roles)
    if not (isinstance(recorded, dict) and set(recorded) == set(job)
            and all(_is_int(v) and 0 <= v <= most[k] for k, v in recorded.items())
            and all(recorded[k] == job[k] for k in ("hosts", "names", "cert"))):
        return job
    return dict(recorded)


def _recorded_plan(recorded) -> tuple[float, float] | None:
    """A training's (rho per epoch run, binning rho) from its ``open`` line, if well formed: a ledger
    written before vfl recorded them, or a damaged record, leaves the job's current plan to count it."""
    if not isinstance(recorded, dict):
        return None
    values = (recorded.get("epoch_rho"), recorded.get("binning_rho"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        return float(values[0]), float(values[1])
    return None


def _check_open(led: PartyLedger, entry: dict, where: str, roles: dict, job_name: str | None,
                strict: bool = True) -> dict:
    """An ``open`` line must be this party's, of a known task, for the audited job and (``strict``: the
    last training and every run after it) its parties: messages of another job's run, or of a task
    whose phases are unknown, cannot be checked. Returns the parties the run's lines are checked
    against: an earlier run may record other parties (a retraining with a host removed), and is
    checked against its own, if they are a job's party set."""
    if entry.get("party") != led.name or entry.get("role") != led.role:
        led.problems.append(f"{where}: ledger opened by {entry.get('party')!r} as "
                            f"{entry.get('role')!r}, not by {led.name!r} as {led.role!r}")
    if entry.get("task") not in TASK_PHASES:
        led.problems.append(f"{where}: run of unknown task {entry.get('task')!r}: its messages' phases "
                            f"cannot be checked (tasks: {', '.join(TASK_PHASES)})")
    if job_name is not None and entry.get("job") != job_name:
        led.problems.append(f"{where}: run opened for job {entry.get('job')!r}, not the audited {job_name!r}")
    recorded = entry.get("roles")
    if recorded == roles and not led.former:
        return roles
    if strict:
        led.problems.append(f"{where}: run opened with parties {recorded!r}, not the job's {roles!r} (the job's "
                            "last training, and every run after it, must be run with the job file's parties)")
        return roles
    bad = _party_set_problem(recorded, led)
    if bad is not None:
        led.problems.append(f"{where}: earlier run opened with parties {recorded!r}, {bad}: its lines are "
                            f"checked against the job's {roles!r}")
        return roles
    led.other_runs.append((where, dict(recorded)))
    return dict(recorded)


def _descriptor_problem(entry: dict) -> str | None:
    """What is wrong with a line's payload description by itself (None when nothing): a line that
    drops its kind, or counts fewer values than its shape holds, would understate what a party got."""
    kind, shape, values, nbytes = entry.get("kind"), entry.get("shape"), entry.get("values"), entry.get("bytes")
    if kind is None:
        return "records no payload kind"
    if not _is_int(values) or values < 0 or not _is_int(nbytes) or nbytes < 0:
        return f"records {values!r} values in {nbytes!r} bytes, not whole numbers"
    if values > nbytes:
        return f"records {values} values in only {nbytes} bytes"
    if kind == "array" and not isinstance(entry.get("dtype"), str):
        return "records an array without its dtype"
    if kind in ("array", "encrypted", "bigints"):
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            return f"records shape {shape!r}, not a list of sizes"
        if values != math.prod(shape):
            return f"records {values} values for shape {shape}"
    return None


def _check_message(led: PartyLedger, entry: dict, where: str, roles: dict, task,
                   min_release_rows: int | None = None, sizes: dict | None = None,
                   min_bin_rows: int | None = None) -> None:
    peer, step, direction = entry.get("peer"), entry.get("step"), entry.get("dir")
    if peer not in roles or peer == led.name:
        led.problems.append(f"{where}: peer {peer!r} is not another party of this job")
        return
    run: Run = led.run_log[-1]
    if entry.get("refused"):
        run.failed = True            # the receiver raised: the run ends here
        led.problems.append(f"{where}: {led.name} refused {step!r} from {peer}: {entry['refused']}")
        return
    if direction == "sent":
        sender, receiver = led.role, roles[peer]
    elif direction == "received":
        sender, receiver = roles[peer], led.role
    else:
        led.problems.append(f"{where}: direction {direction!r} is neither sent nor received")
        return
    bad = _descriptor_problem(entry)
    if bad is not None:
        led.problems.append(f"{where}: {step!r} {bad}")
        return
    try:
        spec = find(str(step), sender, receiver, entry.get("kind"), entry.get("dtype"), task, roles)
    except SpecViolation as exc:
        led.problems.append(f"{where}: {exc}")
        return
    if entry.get("class") != spec.cls:
        led.problems.append(f"{where}: {step!r} recorded as class {entry.get('class')!r}; the spec says {spec.cls!r}")
        return
    if not _check_size(led, run, spec, entry, where, peer, sizes if sizes is not None else public_sizes(roles)):
        return
    key = (peer, step, entry.get("sha256"))
    if direction == "sent" and run.scored and receiver == "host":
        led.problems.append(f"{where}: the guest sent {step!r} to {peer} after it had the hosts' scores of the "
                            "aligned rows: what it computes from then on (its refit on exact labels) is outside "
                            "the hosts' label-DP guarantee, so nothing may reach a host")
    if direction == "received" and run.scored and sender == "guest":
        led.problems.append(f"{where}: {led.name} received {step!r} from the guest after it had sent the guest "
                            f"its scores of the aligned rows ({SCORED_STEP}): what the guest computes from then "
                            "on (its refit on exact labels) is outside the hosts' label-DP guarantee, so nothing "
                            "may reach a host")
    if task == "train" and step in (SCORED_STEP, ENCRYPTED_SCORED_STEP):
        run.scored = True
    rows = entry.get("rows")
    msg = Msg(str(step), entry.get("sha256"), where, {k: entry.get(k) for k in DESCRIPTOR}, rows,
              spec.rows == RELEASE)
    training = led.trainings[-1] if task == "train" and led.trainings else None
    if direction == "sent" and step == "woe/columns" and training is not None and _is_int(entry.get("columns")):
        training.binned_columns = entry["columns"]
    if direction == "sent":
        led.sent_messages += 1
        led.sent_bytes += int(entry.get("bytes") or 0)
        led.sent[key].append(msg)
        run.sent.setdefault(peer, []).append(msg)
        return
    led.received.setdefault(spec.cls, ClassStats()).add(entry, spec.rows)
    if spec.rows == UNFLOORED and entry.get("values"):
        led.unfloored.messages += 1
        led.unfloored.steps.add(spec.doc)
        run.uncounted[(str(peer), str(step))] = where
    led.got.append((peer, msg))
    run.got.setdefault(peer, []).append(msg)
    if step == "woe/host_woe" and training is not None:   # a resume must resend the same noised WOE, not a new draw
        training.woe.setdefault(entry.get("sha256"), where)
    if spec.rows == RELEASE and entry.get("values"):
        led.releases += 1
        if training is not None:                 # "<pre>/e<epoch>/b<batch>/masked_grad_plain"
            training.epochs[-1].add(str(step).split("/")[1])
        if not _is_int(rows):
            led.problems.append(f"{where}: {step!r} records no whole number of rows behind the released sums "
                                f"({rows!r}): the receiver counts them itself, and the floor can not be checked "
                                "without them")
    if rows is not None and not _is_int(rows):
        if spec.rows != RELEASE:
            led.problems.append(f"{where}: {step!r} records rows {rows!r}, not a whole number")
    elif rows is not None and entry.get("values"):
        led.problems.extend(f"{where}: {step!r} {p}" for p in _floor_problems(spec, rows, min_release_rows,
                                                                              min_bin_rows))


def _floor_problems(spec: StepSpec, rows: int, min_release_rows: int | None, min_bin_rows: int | None) -> list[str]:
    """The floors a non-empty line's recorded ``rows`` falls below: any plaintext aggregate must reach
    ``min_rows_per_release``, and a binning step whose rows are the host's smallest bin (spec rows
    "bins") the ``[preprocess] min_bin_rows`` the spec promises for every bin, which is the higher one."""
    out = []
    if spec.cls == AGGREGATE and min_release_rows is not None and rows < min_release_rows:
        what = "released sums" if spec.rows == RELEASE else "is an aggregate"
        out.append(f"{what} over {rows} rows, below the job's min_rows_per_release = {min_release_rows}")
    if spec.rows == "bins" and min_bin_rows is not None and rows < min_bin_rows:
        out.append(f"stands on bins of {rows} rows, below the job's [preprocess] min_bin_rows = {min_bin_rows}")
    return out


def _check_rows_line(led: PartyLedger, entry: dict, where: str) -> None:
    """A ``rows`` line: the fewest rows behind a non-empty sum of the aggregate with no row minimum that
    this party received last at that step from that peer, in this run (each such message at most one)."""
    run: Run = led.run_log[-1]
    peer, step, rows = entry.get("peer"), entry.get("step"), entry.get("rows")
    if run.uncounted.pop((str(peer), str(step)), None) is None:      # str: a malformed line is no key
        led.problems.append(f"{where}: a row count for {step!r} from {peer!r}, but no such message without a row "
                            "minimum was received before it in this run (or it was counted already)")
        return
    if not _is_int(rows) or rows < 1:
        led.problems.append(f"{where}: {step!r} from {peer!r}: the fewest rows behind a non-empty sum is recorded as "
                            f"{rows!r}, not a whole number of at least 1")
        return
    stats = led.unfloored
    stats.counted += 1
    stats.min_rows = rows if stats.min_rows is None else min(stats.min_rows, rows)


def _check_size(led: PartyLedger, run: Run, spec: StepSpec, entry: dict, where: str, peer: str,
                sizes: dict) -> bool:
    """A control line over its step's ceiling is a problem (False): per-row data in a control step.
    A host's column declaration sets the sizes of the link's later control steps in this run."""
    if entry.get("kind") != "control" or spec.cap is None:
        return True
    declared = run.declared.get(peer)
    if declared == "unsized":
        return True
    if spec.doc in DECLARES:
        columns, cells = entry.get("columns"), entry.get("cells")
        if columns is None and cells is None and "columns" not in entry and "cells" not in entry:
            # a ledger written before declarations recorded their sizes: the link's sized steps in this
            # run can not be checked (said in the report), which is no reason to fail an old job
            run.declared[peer] = "unsized"
            led.notes.append(f"{where}: {spec.doc!r} records no sizes (a ledger from an older version): the "
                             "control ceilings of this link's later steps in that run were not checked")
            return True
        if not (_is_int(columns) and _is_int(cells) and columns >= 0 and cells >= 0):
            led.problems.append(f"{where}: {spec.doc!r} records no whole numbers of columns and cells "
                                f"({columns!r}, {cells!r}): the link's later control steps can not be sized")
            return False
        declared = run.declared[peer] = {"columns": columns, "cells": cells}
    try:
        check_size(spec, str(entry.get("step")), entry["values"], entry["bytes"], {**sizes, **(declared or {})})
    except SpecViolation as exc:
        led.problems.append(f"{where}: {exc}")
        return False
    return True


def _cross_check(ledgers: dict[str, PartyLedger]) -> None:
    """Every message a party received must be in the sender's ledger, with the same payload hash and
    the same description (kind, dtype, shape, values, bytes, rows ...); and every message a party
    sent in the receiver's ledger, in the order sent (:func:`_check_delivered`)."""
    clean = {name for name, led in ledgers.items() if not led.problems}
    _check_delivered(ledgers, clean)
    for led in ledgers.values():
        for peer, msg in led.got:
            other = ledgers.get(peer)
            if other is None or peer not in clean:
                continue
            queue = other.sent.get((led.name, msg.step, msg.digest))
            if not queue:
                led.problems.append(f"{msg.where}: {led.name} recorded {msg.step!r} from {peer}, but {peer}'s ledger "
                                    "has no such message sent (same step and payload hash)")
                continue
            sent = queue.popleft()
            diffs = _differences(sent, msg)
            if diffs:
                led.problems.append(f"{msg.where}: {led.name}'s line of {msg.step!r} from {peer} differs from "
                                    f"{peer}'s line of the same payload ({sent.where}): {'; '.join(diffs)}")


def _differences(sent: Msg, got: Msg) -> list[str]:
    """Where a receipt's description differs from its send's. Rows must agree too, but for a
    release, whose rows only the receiver counts (the sender's line has none)."""
    out = [f"{k} {got.desc.get(k)!r}, sent {sent.desc.get(k)!r}" for k in DESCRIPTOR
           if got.desc.get(k) != sent.desc.get(k)]
    if not (got.noted and sent.rows is None) and got.rows != sent.rows:
        out.append(f"rows {got.rows!r}, sent {sent.rows!r}")
    return out


def _deliveries(sent: list, got: list, excusable: bool) -> tuple[int, list, bool, Msg | None]:
    """Match one run's receipts on a link against the paired run's sends (by step and payload hash):
    (receipts without a send, sends without a receipt, whether those may be excused, the first
    receipt out of the order sent). Unreceived sends are excused only as the last sends of a run
    that ended in failure by a record the receiver can not write (``excusable``): messages in
    flight when it broke. Anything else is a receipt cut from the receiver's ledger."""
    where = defaultdict(deque)
    for i, msg in enumerate(sent):
        where[(msg.step, msg.digest)].append(i)
    matched: set[int] = set()
    orphans, previous, disorder = 0, -1, None
    for msg in got:
        if where[(msg.step, msg.digest)]:
            i = where[(msg.step, msg.digest)].popleft()
            matched.add(i)
            if i < previous and disorder is None:
                disorder = msg
            previous = max(previous, i)
        else:
            orphans += 1
    last = max(matched, default=-1)
    left = [i for i in range(len(sent)) if i not in matched]
    excused = not left or (excusable and left[0] > last)
    return orphans, [sent[i] for i in left], excused, disorder


def _align(sender: list, receiver: list, r_name: str, s_name: str, backed) -> list:
    """Pair the sender's runs with the receiver's (same task, in order) so that the fewest messages
    go unexplained; returns (sender run or None, receiver run or None) in order. Runs are paired
    by content, not by count, because a party that failed before opening its ledger has one run
    fewer than its peers. ``backed(run)``: whether a sender's run ended in failure by a record
    the receiver can not write; such a run may stay unpaired at no cost, but a receiver's run with
    receipts from the sender may not (else a cut in the middle of a run whose sender failed would
    go unseen, its remaining receipts matched by hash alone)."""
    n, m = len(sender), len(receiver)
    INF = (float("inf"), 0)
    best = [[INF] * (m + 1) for _ in range(n + 1)]
    move = [[None] * (m + 1) for _ in range(n + 1)]
    best[n][m] = (0, 0)
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            options = []
            if i < n:
                a = sender[i].sent.get(r_name, [])
                cost = 0 if not a or backed(sender[i]) else len(a)
                options.append(((best[i + 1][j][0] + cost, best[i + 1][j][1]), "s"))
            if j < m:         # receipts come only from a run of the sender: never leave them unpaired cheaply
                cost = len(receiver[j].got.get(s_name, [])) * UNPAIRED_RECEIPT
                options.append(((best[i][j + 1][0] + cost, best[i][j + 1][1]), "r"))
            if i < n and j < m and sender[i].task == receiver[j].task:
                orphans, left, excused, _ = _deliveries(sender[i].sent.get(r_name, []),
                                                        receiver[j].got.get(s_name, []), backed(sender[i]))
                cost = orphans + (0 if excused else len(left))
                options.append(((best[i + 1][j + 1][0] + cost, best[i + 1][j + 1][1] - 1), "p"))
            best[i][j], move[i][j] = min(options, key=lambda o: o[0])
    out, i, j = [], 0, 0
    while i < n or j < m:
        step = move[i][j]
        out.append((sender[i] if step in "sp" else None, receiver[j] if step in "rp" else None))
        i, j = i + (step in "sp"), j + (step in "rp")
    return out


def _overlap(a: Run, b: Run) -> bool:
    return None not in (a.start, a.end, b.start, b.end) and a.start <= b.end and b.start <= a.end


def _failure_backer(ledgers: dict[str, PartyLedger], clean: set, s: PartyLedger, r: PartyLedger):
    """``backed(run)`` for the sender ``s``'s runs towards ``r``: the run ended in failure by a record
    ``r`` can not write. ``s``'s own ledger (a failed or refused line in the run, or a later resumed
    training), or a third party's run of the same task that failed while it ran. A failure only
    ``r``'s ledger shows is ``r``'s say-so: it could cut its last receipts and append one."""
    failed = [o for led in ledgers.values() if led is not s and led is not r and led.name in clean
              for o in led.run_log if o.failed]
    known: dict[int, bool] = {}          # the pairing asks about each run many times

    def backed(run: Run) -> bool:
        if id(run) not in known:
            known[id(run)] = run.failed or any(o.task == run.task and _overlap(o, run) for o in failed)
        return known[id(run)]
    return backed


def _check_delivered(ledgers: dict[str, PartyLedger], clean: set) -> None:
    """Every message a party recorded as sent must be recorded as received by its peer, when the
    peer's ledger is present, in the order sent: else a party could cut received lines off the end
    of its own ledger (the chain stays valid) and hide what it was sent. Only a run that ended in
    failure by another party's record may end with sends its peer never received."""
    for s in ledgers.values():
        for r in ledgers.values():
            if s is r or s.name not in clean or r.name not in clean:
                continue
            backed = _failure_backer(ledgers, clean, s, r)
            a = [run for run in s.run_log if {s.role, r.role} <= set(task_roles(run.task))]
            b = [run for run in r.run_log if {s.role, r.role} <= set(task_roles(run.task))]
            for sent_run, got_run in _align(a, b, r.name, s.name, backed):
                if sent_run is None or not sent_run.sent.get(r.name):
                    continue
                sent = sent_run.sent[r.name]
                if got_run is None:
                    if not backed(sent_run):
                        r.problems.append(f"{sent[0].where}: {s.name} recorded {len(sent)} message(s) sent to "
                                          f"{r.name} ({_steps(sent)}) in a {sent_run.task} run of which "
                                          f"{r.name}'s ledger records nothing received")
                    continue
                _, left, excused, disorder = _deliveries(sent, got_run.got.get(s.name, []), backed(sent_run))
                if disorder is not None:
                    r.problems.append(f"{disorder.where}: {r.name} recorded {disorder.step!r} from {s.name} out of "
                                      f"the order {s.name} sent it in (a link delivers in order): lines were moved")
                if not excused:
                    if backed(sent_run):
                        why = "they are not the last sends of the run"
                    elif got_run.failed:
                        why = (f"only {r.name}'s own ledger shows that run failed, which {r.name} could have "
                               f"written itself after cutting its receipts: neither {s.name}'s ledger nor a third "
                               "party's backs it")
                    else:
                        why = "no ledger shows that run failed"
                    r.problems.append(f"{left[0].where}: {s.name} recorded {len(left)} message(s) sent to {r.name} "
                                      f"({_steps(left)}) that {r.name}'s ledger does not record as received "
                                      f"(same step and payload hash); {why}")


def _steps(lines: list) -> str:
    steps = list(dict.fromkeys(msg.step for msg in lines))
    return ", ".join(repr(x) for x in steps[:3]) + (f" and {len(steps) - 3} more steps" if len(steps) > 3 else "")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _report_path(job, led: PartyLedger) -> Path:
    """Where a party reports its results: the guest's metrics.json, a host's report.json."""
    return job.workdir / "metrics.json" if led.role == "guest" else job.output_dir(led.name) / "report.json"


def _read_report(path: Path) -> dict | None:
    """A party's JSON report; None when there is none (a run that ended before writing it). Raises
    ValueError when the file exists but is no JSON object, so a check can fail on it, not skip it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(getattr(exc, "strerror", None) or str(exc)) from None
    report = json.loads(text)
    if not isinstance(report, dict):
        raise ValueError("not a JSON object")
    return report


def _reported_release_rows(job, led: PartyLedger) -> int | None:
    """The smallest number of rows behind a released sum, as the party itself reports it (None when
    it reports none or its report can not be read: the report's line only, the check is elsewhere)."""
    try:
        report = _read_report(_report_path(job, led))
    except ValueError:
        return None
    return report.get("smallest_release_rows") if report is not None else None


def _epochs_shown(led: PartyLedger) -> int:
    """Distinct epochs in which this ledger's last training received releases (an epoch re-run after
    a resume counts once)."""
    return len(set().union(*led.release_epochs))


def _check_reported_epochs(job, ledgers: dict[str, PartyLedger]) -> None:
    """Tie the reports of the last training to the ledgers, label-DP on or off. The arbiter's
    training.json and each host's report.json say how many epochs ran (``epochs_run``), and each
    epoch releases sums to the parties, so the ledgers' last training must show releases in at least
    that many epochs (the arbiter's figure in some party's ledger, a host's in its own). Without this,
    ledgers cut back consistently (to their ``open`` lines, or to before the training) agree with one
    another and pass. SecureBoost releases no sums by epoch (its reports count trees): not checked; nor
    are the reports of hosts with encrypted weights, which never get a release (the arbiter's figure is
    still checked, against the guest's releases). A ledger with a problem already fails the audit and is
    left out (its lines stop at the damage)."""
    clean = [led for led in ledgers.values() if not led.problems]
    if job.model.type == "secureboost" or not clean:
        return
    arbiter = ledgers.get(job.arbiter.name) or clean[0]
    reports = [(job.output_dir(job.arbiter.name) / "training.json", arbiter, "the parties' ledgers show",
                max(map(_epochs_shown, clean)))]
    reports += [(job.output_dir(h.name) / "report.json", ledgers[h.name], f"{h.name}'s ledger shows",
                 _epochs_shown(ledgers[h.name])) for h in job.hosts
                if ledgers.get(h.name) in clean and not job.model.encrypted_hosts]
    for path, led, whose, seen in reports:
        try:
            report = _read_report(path)
        except ValueError:
            continue          # the noise and floor checks name an unreadable training.json or report.json
        epochs = report.get("epochs_run") if report is not None else None
        if _is_int(epochs) and epochs > seen:
            led.problems.append(f"{path} reports {epochs} epochs run, but {whose} releases in only {seen} epoch(s) "
                                "of the last training: the ledgers were cut back or are of another run")


def _read_label_dp(job) -> tuple[dict | None, Path]:
    path = job.output_dir(job.arbiter.name) / "training.json"
    try:
        dp = json.loads(path.read_text()).get("label_dp")
    except (OSError, ValueError, AttributeError):
        return None, path
    return (dp if isinstance(dp, dict) else None), path


def _check_noise(job, ledgers: dict[str, PartyLedger]) -> str | None:
    """With label-DP on (the job file says so, not the arbiter), every release a party received must
    have been noised by the arbiter. Returns the report line on the epsilon of every training in the
    ledgers, when more than one spent any."""
    if not job.model.label_dp_on:
        return None
    dp, path = _read_label_dp(job)
    if not any("train" in led.runs for led in ledgers.values()):
        _check_untrained(job, dp, path, ledgers)
        return None
    if dp is None and not any(t.epoch_runs or t.binned for led in ledgers.values() for t in led.trainings):
        return None         # every training failed before its first release: there was nothing to noise
    if dp is None or not dp.get("on"):
        led = ledgers.get(job.arbiter.name) or next(iter(ledgers.values()))
        led.problems.append(f"the job file turns label-DP on, but the arbiter's {path} "
                            + ("is missing or unreadable" if dp is None else "says it was off")
                            + ": nothing shows that the releases were noised")
        return None
    noised = dp.get("noised_releases") if isinstance(dp.get("noised_releases"), dict) else {}
    for p in (job.guest, *job.hosts):
        led = ledgers.get(p.name)
        if led is None or led.problems:
            continue
        count = noised.get(p.name)
        if not isinstance(count, int) or count != led.releases:
            led.problems.append(f"label-DP is on, but {p.name} received {led.releases} released sums in the last "
                                f"training run and the arbiter reports noising {count} of them: every party's "
                                "releases, the guest's included, must carry the noise")
    return _check_noise_level(job, dp, noised, ledgers)


def _check_untrained(job, dp: dict | None, path: Path, ledgers: dict[str, PartyLedger]) -> None:
    """No ledger shows a training run: fine for a job that never trained, but not when the arbiter
    reports noised releases or epochs, which only a training makes (ledgers emptied or cut back)."""
    noised = dp.get("noised_releases") if isinstance(dp, dict) else None
    count = sum(v for v in noised.values() if _is_int(v)) if isinstance(noised, dict) else 0
    epochs = dp.get("noised_epochs") if isinstance(dp, dict) else None
    if count > 0 or (_is_int(epochs) and epochs > 0):
        led = ledgers.get(job.arbiter.name) or next(iter(ledgers.values()))
        led.problems.append(f"label-DP is on, and the arbiter's {path} reports noising {count} releases over "
                            f"{epochs} epochs, but no ledger shows a training run: the ledgers were cut back or "
                            "replaced")


def _check_noise_level(job, dp: dict, noised: dict, ledgers: dict[str, PartyLedger]) -> str | None:
    """The noise the arbiter drew is at least what the job's plan asks for, and the epsilon it implies
    over the epochs run at most the job's (a party with no release drawn for counts at the plan's level);
    then the epsilon of every training in the ledgers together (:func:`_check_trainings`)."""
    from ..models.privacy import epsilon_for, plan_for
    m, plan = job.model, plan_for(job.model, len(job.hosts))
    led = ledgers.get(job.arbiter.name) or next(iter(ledgers.values()))
    drawn = dp.get("noise_sd") if isinstance(dp.get("noise_sd"), dict) else {}
    rho = 0.0
    for p in (job.guest, *job.hosts):
        need = plan.for_party(p is job.guest) * m.clip_norm
        sd = drawn.get(p.name) if noised.get(p.name) else need
        if not isinstance(sd, (int, float)) or not sd > 0:
            led.problems.append(f"label-DP is on, but the arbiter reports no noise level for {p.name} (a "
                                "training.json written before vfl recorded it cannot be checked: train again)")
            return None
        if sd < need * (1 - 1e-9):
            led.problems.append(f"label-DP is on, but the arbiter drew noise of standard deviation {sd:.6g} for "
                                f"{p.name}, where the job's plan (epsilon {m.dp_epsilon:g}, delta {m.dp_delta:g}, "
                                f"{m.epochs} epochs) asks for {need:.6g}")
        rho += 0.5 * (m.clip_norm / sd) ** 2
    epochs = dp.get("noised_epochs")
    if not isinstance(epochs, int) or epochs < 0:
        led.problems.append("label-DP is on, but the arbiter reports no number of noised epochs (a training.json "
                            "written before vfl counted them cannot be checked: train again)")
        return None
    # what each party's own ledger shows: an epoch re-run after an interruption counts again
    seen = max((sum(len(s) for s in other.release_epochs) for other in ledgers.values()), default=0)
    if seen > epochs:
        led.problems.append(f"label-DP is on, but the parties' ledgers show releases in {seen} epoch runs "
                            f"(resumed runs included), where the arbiter reports noising {epochs}")
    binning = _binning_rho(job, plan, led, ledgers) if job.preprocess is not None else 0.0
    if binning is None:
        return None
    last = binning + max(seen, epochs) * rho
    if (spent := epsilon_for(last, m.dp_delta)) > m.dp_epsilon * (1 + 1e-9):
        led.problems.append(f"label-DP is on, but the noise drawn over {max(seen, epochs)} noised epochs"
                            + (" and the binning stage" if binning else "")
                            + f" spends epsilon {spent:.4g}, more than the job's {m.dp_epsilon:g}")
    return _check_trainings(job, plan, last, led, ledgers)


def _check_trainings(job, plan, last: float, led: PartyLedger, ledgers: dict[str, PartyLedger]) -> str | None:
    """The epsilon of every training the ledgers show, together. Each run without ``--resume`` starts
    a training with a budget of its own, on the same labels: a host keeps what it saw of every one, so
    their zCDP adds up. The last training counts with the noise the arbiter reports (``last``, its
    rho); an earlier one, whose noise no file reports any more, with the plan its ``open`` line
    records (the job's current plan if it records none): its binning stage if it binned, and each
    epoch run with a release in the ledger that shows the most. Returns the report line (None when
    only one training spent anything)."""
    from ..models.privacy import epsilon_for
    m = job.model
    now = (plan.rho(1) - plan.binning_rho, plan.binning_rho)
    earlier: list[tuple[float, int, int]] = []          # (rho, runs, epoch runs) per earlier training
    for other in ledgers.values():
        mine = []
        for t in other.trainings[:-1]:
            per_epoch, binning = t.plan or now
            mine.append(((binning if job.preprocess is not None and t.binned else 0.0) + t.epoch_runs * per_epoch,
                         len(t.epochs), t.epoch_runs))
        mine = [x for x in mine if x[0] > 0]
        if sum(x[0] for x in mine) > sum(x[0] for x in earlier):
            earlier = mine
    if not earlier:
        return None
    total = epsilon_for(sum(x[0] for x in earlier) + last, m.dp_delta)
    each = ", ".join(f"{epsilon_for(r, m.dp_delta):.4g} ({runs} run{'s' * (runs != 1)}, {e} epoch runs with "
                     "releases)" for r, runs, e in earlier) + f", then {epsilon_for(last, m.dp_delta):.4g} (the last)"
    text = (f"label-DP over the {len(earlier) + 1} trainings in the ledgers, on the same labels: epsilon {each}; "
            f"{total:.4g} in all (zCDP composition) against any host")
    if total > m.dp_epsilon * (1 + 1e-9):
        led.problems.append(f"label-DP is on, but the ledgers show {len(earlier) + 1} trainings of this job on the "
                            f"same labels (each run without --resume starts a training with a budget of its own, "
                            f"and a host keeps what it saw of every one): epsilon {each}, {total:.4g} in all, more "
                            f"than the job's {m.dp_epsilon:g}")
    return text


def _check_woe_reuse(job, ledgers: dict[str, PartyLedger]) -> None:
    """With label-DP and [preprocess], a host must receive one noised WOE message per training. A
    resume resends the first run's noised counts (``binning.noise.json``): a second, different
    ``woe/host_woe`` in one training would be other noise or the same noise on other counts, whose
    difference reveals the change of the per-bin event counts (noise reused, no guarantee left).
    Identical payloads are one release."""
    if not job.model.label_dp_on or job.preprocess is None:
        return
    for led in ledgers.values():
        for t in led.trainings:
            if len(t.woe) > 1:
                led.problems.append(f"{', '.join(list(t.woe.values())[:3])}: noise reused: {led.name} received "
                                    f"{len(t.woe)} different noised WOE messages (woe/host_woe) in one training (a "
                                    "fresh run and the resumes that continue it, which resend one release): their "
                                    "difference is the change of the per-bin event counts, without noise")


def _check_reported_rows(job, ledgers: dict[str, PartyLedger]) -> None:
    """The smallest release a party reports (its metrics.json or report.json) must reach the floor too:
    the report is what a reader of the job's results sees. A report that exists but can not be read
    (truncated, damaged) is a problem: skipping it would let a damaged file hide a small release."""
    floor = job.model.min_rows_per_release
    for led in ledgers.values():
        if led.role == "arbiter" or "train" not in led.runs:
            continue
        path = _report_path(job, led)
        try:
            report = _read_report(path)
        except ValueError as exc:
            led.problems.append(f"{path} cannot be read ({exc}): the smallest release {led.name} reports can not "
                                "be checked against the floor")
            continue
        reported = report.get("smallest_release_rows") if report is not None else None
        if reported is not None and (not _is_int(reported) or reported < floor):
            led.problems.append(f"{led.name} reports {reported!r} rows behind its smallest released sum, below the "
                                f"job's min_rows_per_release = {floor}")


def _binning_rho(job, plan, led: PartyLedger, ledgers: dict[str, PartyLedger]) -> float | None:
    """The zCDP the guest's noised per-bin event counts spent, from its ``metrics.json``, checked
    against the plan's share (None, with a problem noted, when the guest reports no noise). The
    columns it counts must include every column the hosts' own ledgers show they binned: fewer
    would lower the noise the plan asks for."""
    path = job.workdir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        dp = metrics.get("binning_label_dp")
        sd, columns = float(dp["noise_sd"]), int(dp["columns"])
        own = len(metrics.get("iv", {}).get("guest", []))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        led.problems.append(f"label-DP is on with [preprocess], but {path} reports no noise on the per-bin "
                            "event counts: nothing shows that WOE and IV were computed from noised counts")
        return None
    hosts = sum(other.binned_columns for other in ledgers.values() if other.role == "host")
    if columns < own + hosts:
        led.problems.append(f"label-DP is on with [preprocess], but the guest reports noising the counts of "
                            f"{columns} columns, where it binned {own} and the hosts' ledgers show {hosts} more")
    need = plan.binning_sd(columns)
    if not sd >= need * (1 - 1e-9) or columns < 1:
        led.problems.append(f"label-DP is on with [preprocess], but the guest noised its per-bin event counts "
                            f"with sd {sd:.6g}, where the job's plan asks for {need:.6g} over {columns} columns")
    return columns / (2.0 * sd * sd) if sd > 0 else float("inf")


def _label_dp(job) -> str | None:
    dp, path = _read_label_dp(job)
    if dp is None:
        return None
    if job.model.encrypted_hosts:        # checked above: no host received a decrypted value
        return f"label-DP: not needed, the hosts' weights stayed encrypted (from {path})"
    if not dp.get("on") or dp.get("epsilon_spent") is None:
        return f"label-DP: off (from {path})"
    return (f"label-DP: epsilon spent {float(dp['epsilon_spent']):.4g} against any host (delta {dp.get('delta')}, "
            f"noise multipliers {dp.get('noise_multiplier')}, clip norm {dp.get('clip_norm')}; from {path})")


def _missing_ledgers(job, ledgers: dict[str, PartyLedger]) -> dict[str, str]:
    """Parties of ``job`` with no ledger although another party's ledger has a run they take part in:
    a deleted ledger hides everything that party received and sent. A run that exchanged nothing
    with the party and failed, or exchanged nothing at all, does not count: it may have ended before
    that party opened its ledger (a party that fails on its data makes the launcher end the others
    at once)."""
    out = {}
    for p in job.parties:
        if p.name in ledgers:
            continue
        seen = sorted(led.name for led in ledgers.values()
                      if any(p.role in task_roles(run.task)
                             and (p.name in run.sent or p.name in run.got
                                  or (not run.failed and bool(run.sent or run.got)))
                             for run in led.run_log))
        if seen:
            out[p.name] = (f"{job.output_dir(p.name) / LEDGER_FILE} is missing, but the ledgers of "
                           f"{', '.join(seen)} record runs that {p.name} took part in")
    return out


def _former_ledgers(job, roles: dict[str, str], ledgers: dict[str, PartyLedger]) -> tuple[dict, str | None]:
    """The ledgers of parties that earlier runs in ``ledgers`` had and the job no longer has (a host
    removed before a retraining in the same workdir), read when still in the workdir: those runs are
    cross-checked with them like any other. Returns them and the report's note on the earlier runs
    with other parties (None when there are none), which names the former parties whose ledger is
    absent: the messages of those runs with them could not be checked against it."""
    runs = max((len(led.other_runs) for led in ledgers.values()), default=0)
    if not runs:
        return {}, None
    gone: dict[str, str] = {}
    for led in ledgers.values():
        for _, recorded in led.other_runs:
            for name, role in recorded.items():
                if name not in roles:
                    gone.setdefault(name, role)
    former, absent = {}, []
    for name, role in gone.items():
        path = job.output_dir(name) / LEDGER_FILE if _dir_name(name) else None
        if path is not None and path.is_file():
            former[name] = _read_party(job, path, name, roles, former_role=role)
        else:
            absent.append(f"{name}'s ledger ({path})" if path is not None else f"{name!r}'s ledger")
    sets = "; ".join(dict.fromkeys(", ".join(f"{n} ({r})" for n, r in recorded.items())
                                   for led in ledgers.values() for _, recorded in led.other_runs))
    text = (f"note: {runs} earlier run(s) in the ledgers had other parties than this job ({sets}): each was "
            "audited against the parties its own open line records (the spec by role, the hash chain, and its "
            "messages against the ledgers present); the last training and every run after it against the "
            "job file's")
    if former:
        text += f"; {', '.join(former)}, no party of this job, still in the workdir: read and cross-checked"
    if absent:
        text += (f"; {', '.join(absent)} is absent, so the messages of those runs with "
                 f"{'it' if len(absent) == 1 else 'them'} could not be cross-checked")
    return former, text


def _dir_name(name: str) -> bool:
    """Whether a party name from a ledger can be a party's folder of the workdir (no path tricks)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and "\0" not in name


def _read_party(job, path: Path, name: str, roles: dict[str, str], former_role: str | None = None) -> PartyLedger:
    """:func:`read_ledger` with the job's floors, sizes, name and settings digest."""
    from ..job.fingerprint import section_digests       # late: vfl.job imports this package
    return read_ledger(path, name, roles, job.model.min_rows_per_release, job.name, job_sizes(job),
                       former_role=former_role, settings=section_digests(job),
                       min_bin_rows=job.preprocess.min_bin_rows if job.preprocess is not None else None)


def _check_encrypted_hosts(job, ledgers: dict[str, PartyLedger]) -> None:
    """With ``host_weights = "encrypted"`` a host must never get a value decrypted: everything it receives is
    public, a control word or a ciphertext (PSI's blinded points and positions aside). A release, a masked
    value or a share reaching it is a problem: its view would then depend on the labels otherwise than
    through ciphertexts."""
    if job.model.type != "embedding" or not job.model.encrypted_hosts:
        return
    for led in ledgers.values():
        if led.role != "host":
            continue
        for cls in sorted(set(led.received) - set(ENCRYPTED_HOST_CLASSES)):
            led.problems.append(f"{led.name} has encrypted weights (host_weights = \"encrypted\") but received "
                                f"{led.received[cls].messages} message(s) of class {CLASSES[cls]!r}: such a host "
                                "must never get a decrypted value")


def audit_job(job) -> tuple[bool, str]:
    """Audit the ledgers of ``job``; returns (passed, report text)."""
    roles = {p.name: p.role for p in job.parties}
    ledgers: dict[str, PartyLedger] = {}
    out: list[str] = []
    for p in job.parties:
        path = job.output_dir(p.name) / LEDGER_FILE
        if path.is_file():
            ledgers[p.name] = _read_party(job, path, p.name, roles)
    if not ledgers:
        return False, f"no ledger found under {job.workdir} (expected <workdir>/<party>/{LEDGER_FILE})"
    former, earlier = _former_ledgers(job, roles, ledgers)
    _cross_check({**ledgers, **former})
    _check_encrypted_hosts(job, ledgers)
    _check_reported_rows(job, ledgers)
    _check_reported_epochs(job, ledgers)
    _check_woe_reuse(job, ledgers)
    trainings = _check_noise(job, ledgers)
    missing = _missing_ledgers(job, ledgers)
    for p in job.parties:
        led = ledgers.get(p.name)
        if led is None:
            out.append(f"{p.name} ({p.role}): no ledger")
            if p.name in missing:
                out.append(f"  PROBLEM: {missing[p.name]}")
            continue
        state = "BROKEN" if led.problems else "ok"
        out.append(f"{p.name} ({p.role}): ledger {state}, {led.lines} lines, {len(led.runs)} runs "
                   f"({', '.join(str(t) for t in led.runs)}); sent {led.sent_messages} messages, "
                   f"{_fmt_bytes(led.sent_bytes)}")
        out.extend(f"  note: {n}" for n in led.notes)
        for title, classes in (("received in the clear", CLEAR),
                               ("received protected", [c for c in CLASSES if c not in CLEAR])):
            got = [(c, led.received[c]) for c in classes if c in led.received]
            out.append(f"  {title}:" + ("" if got else " nothing"))
            for c, st in got:
                line = (f"    {CLASSES[c]:<32} {st.messages:>7} messages {st.values:>12} values "
                        f"{_fmt_bytes(st.bytes):>10}")
                if c == AGGREGATE:
                    if st.min_rows is not None:
                        line += f"; smallest rows behind a recorded aggregate: {st.min_rows}"
                    if st.without_rows:
                        reported = _reported_release_rows(job, led)
                        line += (f"; {st.without_rows} released-sum messages (rows not on the wire"
                                 + (f", the party reports at least {reported} rows behind each sum)"
                                    if reported is not None else ")"))
                    if st.uncounted:
                        line += f"; {st.uncounted} not sums over rows (counts of split nodes)"
                out.append(line)
                if c == AGGREGATE and led.unfloored.messages:
                    out.append(led.unfloored.line())
        for problem in led.problems:
            out.append(f"  PROBLEM: {problem}")
    for led in former.values():
        state = "BROKEN" if led.problems else "ok"
        out.append(f"{led.name} ({led.role}; no party of this job, in earlier runs only): ledger {state}, "
                   f"{led.lines} lines, {len(led.runs)} runs ({', '.join(str(t) for t in led.runs)}); sent "
                   f"{led.sent_messages} messages, {_fmt_bytes(led.sent_bytes)}")
        out.extend(f"  note: {n}" for n in led.notes)
        out.extend(f"  PROBLEM: {problem}" for problem in led.problems)
    if earlier:
        out.append(earlier)
    dp = _label_dp(job)
    if dp:
        out.append(dp)
    if trainings:
        out.append(trainings)
    problems = sum(len(led.problems) for led in (*ledgers.values(), *former.values())) + len(missing)
    ok = problems == 0
    out.append("audit passed: every ledger is intact and agrees with the spec" if ok
               else f"audit FAILED: {problems} problem(s)")
    return ok, "\n".join(out)
