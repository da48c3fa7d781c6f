"""``vfl audit JOB.toml``: check the parties' ledgers and say what each party learned.

For every party of the job whose ``<workdir>/<party>/ledger.jsonl`` is present
it verifies the hash chain, that every line is a message the spec declares
between those roles with a payload of the declared kind and class (in a run
opened for this job, its parties and a known task), that every message a
party recorded as received was recorded as sent, with the same payload hash,
by its peer (when the peer's ledger is present too), and that every message a
party recorded as sent its peer recorded as received (but for the last sends
of a run that a ledger shows failed): a party cannot cut lines off the end of
its own ledger unseen. A party of the job with no ledger for runs the others
recorded fails the audit. It
then prints, per party, what it received by payload class (messages, values,
bytes, and the smallest number of rows behind any plaintext aggregate), and
the label-DP epsilon spent when the arbiter's ``training.json`` reports it.
With label-DP on, every release a party received in the last training run
must be one the arbiter reports having noised: the guarantee covers a host's
whole view only if the guest's releases are noised as well as the hosts'
(docs/protocols.md, section 2, "Releases"); the noise it reports drawing must be
at least what the job's (epsilon, delta, epochs, hosts, guest share) plan asks
for, and the epsilon it implies over the epochs noised (an epoch re-run after an
interruption counts again, as the parties' ledgers show) at most the job's. And once the guest of a training run
has the hosts' scores of the aligned rows it sends no host anything: its refit on
exact labels comes after, outside the guarantee, and must stay with the guest. That is judged
from the guest's record of receiving the scores and from each host's: nothing may reach a host
from the guest after it has sent its scores (the guest's own ledger could leave the receipt out).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from .ledger import GENESIS, LEDGER_FILE, line_hash
from .spec import AGGREGATE, CLASSES, CLEAR, ROLES, TASK_PHASES, SpecViolation, find

# In a training run the guest learns the hosts' summed scores of the aligned rows here, then refits
# its own part on exact labels (docs/protocols.md, "The guest's refit"): it may send hosts nothing after.
SCORED_STEP = "predict/u_h_share"


@dataclass
class ClassStats:
    messages: int = 0
    values: int = 0
    bytes: int = 0
    min_rows: int | None = None
    without_rows: int = 0        # aggregates whose rows the ledger does not record

    def add(self, entry: dict) -> None:
        self.messages += 1
        self.values += int(entry.get("values") or 0)
        self.bytes += int(entry.get("bytes") or 0)
        if entry.get("class") == AGGREGATE and entry.get("values"):
            rows = entry.get("rows")
            if isinstance(rows, int):
                self.min_rows = rows if self.min_rows is None else min(self.min_rows, rows)
            else:
                self.without_rows += 1


@dataclass
class Run:
    """One run of a ledger (from its ``open`` line): what it sent and received, per peer, in order."""

    task: str | None
    resume: bool = False
    failed: bool = False           # a failed send/receive, a refusal, or a later resume shows it ended in failure
    sent: dict = field(default_factory=dict)    # peer -> [(step, sha256, where)]
    got: dict = field(default_factory=dict)     # peer -> [(step, sha256, where)]
    scored: bool = False           # in a training run, the hosts' scores of the aligned rows (SCORED_STEP)
                                   # have reached the guest: the guest received them, or this host sent them


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
    sent_messages: int = 0
    sent_bytes: int = 0
    sent: Counter = field(default_factory=Counter)     # (peer, step, sha256) -> count
    got: list = field(default_factory=list)            # (peer, step, sha256, line number)
    problems: list = field(default_factory=list)
    releases: int = 0                                  # non-empty released sums received, last training run
    release_epochs: list = field(default_factory=list)  # per run of the last training (resumes included), the
                                                        # epochs it received releases in
    binning_releases: set = field(default_factory=set)  # distinct woe/host_woe payloads received, last training
    binned_columns: int = 0                             # columns a host binned (its woe/columns), last training
    run_log: list = field(default_factory=list)        # Run, one per "open" line

    @property
    def runs(self) -> list:
        """The task of each run, in order."""
        return [run.task for run in self.run_log]


def read_ledger(path: Path, name: str, roles: dict[str, str], min_release_rows: int | None = None,
                job_name: str | None = None) -> PartyLedger:
    """Parse and verify one party's ledger (chain, spec, own name and role, every run opened for this
    job and its parties, ``job_name`` when given); with ``min_release_rows``, also that no released
    gradient sum stands on fewer rows."""
    led = PartyLedger(name, roles[name], path)
    prev, seq, task = GENESIS, None, None
    with path.open("r", encoding="utf-8") as f:
        for no, raw in enumerate(f, 1):
            led.lines = no
            where = f"{path}:{no}"
            try:
                entry = json.loads(raw)
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                led.problems.append(f"{where}: not a ledger line ({exc})")
                return led
            if entry.get("prev") != prev or entry.get("hash") != line_hash(prev, entry):
                led.problems.append(f"{where}: hash chain broken (the line or one before it was changed, "
                                    "inserted or removed)")
                return led
            prev = entry["hash"]
            if seq is not None and entry.get("seq") != seq + 1:
                led.problems.append(f"{where}: sequence number {entry.get('seq')} after {seq}")
            seq = entry.get("seq") if isinstance(entry.get("seq"), int) else seq
            event = entry.get("event")
            if event == "open":
                task = entry.get("task")
                if task == "train" and entry.get("resume"):     # the training it resumes was interrupted
                    for run in reversed(led.run_log):
                        if run.task == "train":
                            run.failed = True
                            break
                led.run_log.append(Run(task, bool(entry.get("resume"))))
                _check_open(led, entry, where, roles, job_name)
                if task == "train":      # a fresh training starts a new count; a resumed one continues it
                    led.releases = 0
                    led.release_epochs = [*(led.release_epochs if entry.get("resume") else []), set()]
                    if not entry.get("resume"):
                        led.binning_releases, led.binned_columns = set(), 0
                continue
            if not led.run_log:
                # no run says which job, parties and task these lines belong to: the phase checks need it
                led.problems.append(f"{where}: a {event!r} line before the ledger's first 'open' line")
                continue
            if event == "failed":
                led.run_log[-1].failed = True
                continue
            if event != "message":
                led.problems.append(f"{where}: unknown event {event!r}")
                continue
            _check_message(led, entry, where, roles, task, min_release_rows)
    return led


def _check_open(led: PartyLedger, entry: dict, where: str, roles: dict, job_name: str | None) -> None:
    """An ``open`` line must be this party's, of a known task, for the audited job and its parties:
    messages of another job's run, or of a task whose phases are unknown, cannot be checked."""
    if entry.get("party") != led.name or entry.get("role") != led.role:
        led.problems.append(f"{where}: ledger opened by {entry.get('party')!r} as "
                            f"{entry.get('role')!r}, not by {led.name!r} as {led.role!r}")
    if entry.get("task") not in TASK_PHASES:
        led.problems.append(f"{where}: run of unknown task {entry.get('task')!r}: its messages' phases "
                            f"cannot be checked (tasks: {', '.join(TASK_PHASES)})")
    if job_name is not None and entry.get("job") != job_name:
        led.problems.append(f"{where}: run opened for job {entry.get('job')!r}, not the audited {job_name!r}")
    if entry.get("roles") != roles:
        led.problems.append(f"{where}: run opened with parties {entry.get('roles')!r}, not the job's {roles!r}")


def _check_message(led: PartyLedger, entry: dict, where: str, roles: dict, task,
                   min_release_rows: int | None = None) -> None:
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
    try:
        spec = find(str(step), sender, receiver, entry.get("kind"), entry.get("dtype"), task, roles)
    except SpecViolation as exc:
        led.problems.append(f"{where}: {exc}")
        return
    if entry.get("class") != spec.cls:
        led.problems.append(f"{where}: {step!r} recorded as class {entry.get('class')!r}; the spec says {spec.cls!r}")
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
    if task == "train" and step == SCORED_STEP:
        run.scored = True
    line = (step, entry.get("sha256"), where)
    if direction == "sent" and step == "woe/columns" and isinstance(entry.get("values"), int):
        led.binned_columns = entry["values"] // 2           # {bins: [..], ordered: [..]}, one of each per column
    if direction == "sent":
        led.sent_messages += 1
        led.sent_bytes += int(entry.get("bytes") or 0)
        led.sent[key] += 1
        run.sent.setdefault(peer, []).append(line)
    else:
        led.received.setdefault(spec.cls, ClassStats()).add(entry)
        led.got.append((*key, where))
        run.got.setdefault(peer, []).append(line)
        rows = entry.get("rows")
        if step == "woe/host_woe":               # a resume must resend the same noised WOE, not a new draw
            led.binning_releases.add(entry.get("sha256"))
        if spec.doc == "masked_grad_plain" and entry.get("values"):
            led.releases += 1
            if led.release_epochs:                  # "<pre>/e<epoch>/b<batch>/masked_grad_plain"
                led.release_epochs[-1].add(str(step).split("/")[1])
        if (spec.doc == "masked_grad_plain" and min_release_rows is not None and isinstance(rows, int)
                and entry.get("values") and rows < min_release_rows):
            led.problems.append(f"{where}: {step!r} released sums over {rows} rows, below the job's "
                                f"min_rows_per_release = {min_release_rows}")


def _cross_check(ledgers: dict[str, PartyLedger]) -> None:
    """Every message a party received must be in the sender's ledger, with the same payload hash;
    and every message a party sent in the receiver's ledger (:func:`_check_delivered`)."""
    clean = {name for name, led in ledgers.items() if not led.problems}
    _check_delivered(ledgers, clean)
    for led in ledgers.values():
        for peer, step, digest, where in led.got:
            other = ledgers.get(peer)
            if other is None or other.problems:
                continue
            key = (led.name, step, digest)
            if other.sent[key] > 0:
                other.sent[key] -= 1
            else:
                led.problems.append(f"{where}: {led.name} recorded {step!r} from {peer}, but {peer}'s ledger "
                                    "has no such message sent (same step and payload hash)")


def _deliveries(sent: list, got: list, failed: bool) -> tuple[int, list, bool]:
    """Match one run's receipts on a link against the paired run's sends (by step and payload hash):
    (receipts without a send, sends without a receipt, whether those may be excused). Unreceived
    sends are excused only as the last sends of a run that a ledger shows failed: messages in flight
    when it broke. Anything else is a receipt cut from the receiver's ledger."""
    where = defaultdict(deque)
    for i, (step, digest, _) in enumerate(sent):
        where[(step, digest)].append(i)
    matched: set[int] = set()
    orphans = 0
    for step, digest, _ in got:
        if where[(step, digest)]:
            matched.add(where[(step, digest)].popleft())
        else:
            orphans += 1
    last = max(matched, default=-1)
    left = [i for i in range(len(sent)) if i not in matched]
    excused = not left or (failed and left[0] > last)
    return orphans, [sent[i] for i in left], excused


def _align(sender: list, receiver: list, r_name: str, s_name: str) -> list:
    """Pair the sender's runs with the receiver's (same task, in order) so that the fewest messages
    go unexplained; returns (sender run or None, receiver run or None) in order. Runs are paired
    by content, not by count, because a party that failed before opening its ledger has one run
    fewer than its peers."""
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
                cost = 0 if not a or sender[i].failed else len(a)
                options.append(((best[i + 1][j][0] + cost, best[i + 1][j][1]), "s"))
            if j < m:
                cost = len(receiver[j].got.get(s_name, []))
                options.append(((best[i][j + 1][0] + cost, best[i][j + 1][1]), "r"))
            if i < n and j < m and sender[i].task == receiver[j].task:
                orphans, left, excused = _deliveries(sender[i].sent.get(r_name, []), receiver[j].got.get(s_name, []),
                                                     sender[i].failed or receiver[j].failed)
                cost = orphans + (0 if excused else len(left))
                options.append(((best[i + 1][j + 1][0] + cost, best[i + 1][j + 1][1] - 1), "p"))
            best[i][j], move[i][j] = min(options, key=lambda o: o[0])
    out, i, j = [], 0, 0
    while i < n or j < m:
        step = move[i][j]
        out.append((sender[i] if step in "sp" else None, receiver[j] if step in "rp" else None))
        i, j = i + (step in "sp"), j + (step in "rp")
    return out


def _check_delivered(ledgers: dict[str, PartyLedger], clean: set) -> None:
    """Every message a party recorded as sent must be recorded as received by its peer, when the
    peer's ledger is present: else a party could cut received lines off the end of its own ledger
    (the chain stays valid) and hide what it was sent. Only a run that a ledger shows failed may end
    with sends its peer never received."""
    for s in ledgers.values():
        for r in ledgers.values():
            if s is r or s.name not in clean or r.name not in clean:
                continue
            a = [run for run in s.run_log if {s.role, r.role} <= set(task_roles(run.task))]
            b = [run for run in r.run_log if {s.role, r.role} <= set(task_roles(run.task))]
            for sent_run, got_run in _align(a, b, r.name, s.name):
                if sent_run is None or not sent_run.sent.get(r.name):
                    continue
                sent = sent_run.sent[r.name]
                if got_run is None:
                    if not sent_run.failed:
                        r.problems.append(f"{sent[0][2]}: {s.name} recorded {len(sent)} message(s) sent to "
                                          f"{r.name} ({_steps(sent)}) in a {sent_run.task} run of which "
                                          f"{r.name}'s ledger records nothing received")
                    continue
                _, left, excused = _deliveries(sent, got_run.got.get(s.name, []), sent_run.failed or got_run.failed)
                if not excused:
                    why = ("they are not the last sends of the run" if sent_run.failed or got_run.failed
                           else "no ledger shows that run failed")
                    r.problems.append(f"{left[0][2]}: {s.name} recorded {len(left)} message(s) sent to {r.name} "
                                      f"({_steps(left)}) that {r.name}'s ledger does not record as received "
                                      f"(same step and payload hash); {why}")


def _steps(lines: list) -> str:
    steps = list(dict.fromkeys(step for step, _, _ in lines))
    return ", ".join(repr(x) for x in steps[:3]) + (f" and {len(steps) - 3} more steps" if len(steps) > 3 else "")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _reported_release_rows(job, led: PartyLedger) -> int | None:
    """The smallest number of rows behind a released sum, as the party itself reports it."""
    path = job.workdir / "metrics.json" if led.role == "guest" else job.output_dir(led.name) / "report.json"
    try:
        return json.loads(path.read_text()).get("smallest_release_rows")
    except (OSError, ValueError, AttributeError):
        return None


def _read_label_dp(job) -> tuple[dict | None, Path]:
    path = job.output_dir(job.arbiter.name) / "training.json"
    try:
        dp = json.loads(path.read_text()).get("label_dp")
    except (OSError, ValueError, AttributeError):
        return None, path
    return (dp if isinstance(dp, dict) else None), path


def _check_noise(job, ledgers: dict[str, PartyLedger]) -> None:
    """With label-DP on (the job file says so, not the arbiter), every release a party received must
    have been noised by the arbiter."""
    if not job.model.label_dp_on or not any("train" in led.runs for led in ledgers.values()):
        return
    dp, path = _read_label_dp(job)
    if dp is None or not dp.get("on"):
        led = ledgers.get(job.arbiter.name) or next(iter(ledgers.values()))
        led.problems.append(f"the job file turns label-DP on, but the arbiter's {path} "
                            + ("is missing or unreadable" if dp is None else "says it was off")
                            + ": nothing shows that the releases were noised")
        return
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
    _check_noise_level(job, dp, noised, ledgers)


def _check_noise_level(job, dp: dict, noised: dict, ledgers: dict[str, PartyLedger]) -> None:
    """The noise the arbiter drew is at least what the job's plan asks for, and the epsilon it implies
    over the epochs run at most the job's (a party with no release drawn for counts at the plan's level)."""
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
            return
        if sd < need * (1 - 1e-9):
            led.problems.append(f"label-DP is on, but the arbiter drew noise of standard deviation {sd:.6g} for "
                                f"{p.name}, where the job's plan (epsilon {m.dp_epsilon:g}, delta {m.dp_delta:g}, "
                                f"{m.epochs} epochs) asks for {need:.6g}")
        rho += 0.5 * (m.clip_norm / sd) ** 2
    epochs = dp.get("noised_epochs")
    if not isinstance(epochs, int) or epochs < 0:
        led.problems.append("label-DP is on, but the arbiter reports no number of noised epochs (a training.json "
                            "written before vfl counted them cannot be checked: train again)")
        return
    # what each party's own ledger shows: an epoch re-run after an interruption counts again
    seen = max((sum(len(s) for s in other.release_epochs) for other in ledgers.values()), default=0)
    if seen > epochs:
        led.problems.append(f"label-DP is on, but the parties' ledgers show releases in {seen} epoch runs "
                            f"(resumed runs included), where the arbiter reports noising {epochs}")
    binning = _binning_rho(job, plan, led, ledgers) if job.preprocess is not None else 0.0
    if binning is None:
        return
    draws = max((len(other.binning_releases) for other in ledgers.values()), default=0)
    if draws > 1:
        led.problems.append(f"label-DP is on, but a host received {draws} different noised WOE messages in one "
                            "training (its resumes included): each is another release of the per-bin counts")
        binning *= draws
    if (spent := epsilon_for(binning + max(seen, epochs) * rho, m.dp_delta)) > m.dp_epsilon * (1 + 1e-9):
        led.problems.append(f"label-DP is on, but the noise drawn over {max(seen, epochs)} noised epochs"
                            + (" and the binning stage" if binning else "")
                            + f" spends epsilon {spent:.4g}, more than the job's {m.dp_epsilon:g}")


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
    if not dp.get("on") or dp.get("epsilon_spent") is None:
        return f"label-DP: off (from {path})"
    return (f"label-DP: epsilon spent {float(dp['epsilon_spent']):.4g} against any host (delta {dp.get('delta')}, "
            f"noise multipliers {dp.get('noise_multiplier')}, clip norm {dp.get('clip_norm')}; from {path})")


def _missing_ledgers(job, ledgers: dict[str, PartyLedger]) -> dict[str, str]:
    """Parties of ``job`` with no ledger although another party's ledger has a run they take part in:
    a deleted ledger hides everything that party received and sent."""
    out = {}
    for p in job.parties:
        if p.name in ledgers:
            continue
        seen = sorted(led.name for led in ledgers.values()
                      if any(p.role in task_roles(run.task) for run in led.run_log))
        if seen:
            out[p.name] = (f"{job.output_dir(p.name) / LEDGER_FILE} is missing, but the ledgers of "
                           f"{', '.join(seen)} record runs that {p.name} took part in")
    return out


def audit_job(job) -> tuple[bool, str]:
    """Audit the ledgers of ``job``; returns (passed, report text)."""
    roles = {p.name: p.role for p in job.parties}
    ledgers: dict[str, PartyLedger] = {}
    out: list[str] = []
    for p in job.parties:
        path = job.output_dir(p.name) / LEDGER_FILE
        if path.is_file():
            ledgers[p.name] = read_ledger(path, p.name, roles, job.model.min_rows_per_release, job.name)
    if not ledgers:
        return False, f"no ledger found under {job.workdir} (expected <workdir>/<party>/{LEDGER_FILE})"
    _cross_check(ledgers)
    _check_noise(job, ledgers)
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
                out.append(line)
        for problem in led.problems:
            out.append(f"  PROBLEM: {problem}")
    dp = _label_dp(job)
    if dp:
        out.append(dp)
    problems = sum(len(led.problems) for led in ledgers.values()) + len(missing)
    ok = problems == 0
    out.append("audit passed: every ledger is intact and agrees with the spec" if ok
               else f"audit FAILED: {problems} problem(s)")
    return ok, "\n".join(out)
