"""Kill one party of a process-per-party job with SIGKILL and check what follows.

Each trial runs a small logistic-regression job (guest, host and arbiter as
separate OS processes over mutual TLS, 512-bit keys), picks a stage (PSI,
training or scoring) and a victim at random, and kills the victim with SIGKILL
at a random moment within that stage, timed from the parties' log lines.
It then checks that

* every other party still in the session exits non-zero within the peer
  timeout, and that its last stderr line names the lost peer;
* when the kill came during training after at least one epoch checkpoint,
  ``vfl run --resume`` finishes the job with model parts (each party's
  ``model.json``) equal to those of an uninterrupted run to 1e-9.

Scoring inside a training job is one secure-sum exchange of a few
milliseconds, too short to aim a kill at; the scoring stage is therefore the
separate scoring session (``--task predict``: guest and host, PSI over the rows
to score, then the secure sum of the scores) on the trained job's model, and
its victim is the guest or the host. The arbiter takes no part in PSI, but it
is connected during it, so it is a victim there as in training.

    python benchmarks/bench_kill_resume.py --trials 20
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.tls_job import tls_job     # noqa: E402
from parties.demo import free_ports        # noqa: E402
from vfl.job.config import load_job           # noqa: E402
from vfl.job.jobfile import write_job as write_job_file   # noqa: E402
from vfl.io.synth import vertical_split      # noqa: E402

ROLES = ("arbiter", "host", "guest")
PEER_TIMEOUT = 10.0


def write_job(folder: Path, n_rows: int = 6000, epochs: int = 8, peer_timeout: float = PEER_TIMEOUT) -> Path:
    """A TLS job with its data and certificates in ``folder`` (fresh ports for each copy: :func:`copy_job`)."""
    folder.mkdir(parents=True, exist_ok=True)
    guest, (host,) = vertical_split(n_rows, 3, [4], overlap=0.9, seed=4)
    guest.to_csv(folder / "guest.csv", index=False)
    host.to_csv(folder / "host.csv", index=False)
    return tls_job(folder, folder / "guest.csv", [folder / "host.csv"], seed=3,
                   network={"connect_timeout": 30.0, "peer_timeout": peer_timeout},
                   # label-DP off: a resumed run must equal the uninterrupted one to the last bit
                   model={"epochs": epochs, "batch_size": 128, "learning_rate": 0.1, "optimizer": "adam",
                          "tolerance": 0.0, "key_bits": 512, "allow_short_keys": True, "label_dp": "off"})


def copy_job(template: Path, dest: Path, with_output: bool = False) -> Path:
    """The template job in ``dest`` (its data, certificates, and trained outputs if asked) with fresh ports."""
    src = template.resolve().parent
    dest.mkdir(parents=True)
    for name in ("guest.csv", "host.csv"):
        shutil.copy(src / name, dest / name)
    shutil.copytree(src / "certs", dest / "certs")
    if with_output:
        shutil.copytree(src / "out", dest / "out")
    job = load_job(template)
    ports = iter(free_ports(len(job.parties)))

    def moved(path):
        return None if path is None else dest / Path(path).relative_to(src)

    def party(p):
        return replace(p, address=f"127.0.0.1:{next(ports)}", data=moved(p.data), cert=moved(p.cert),
                       key=moved(p.key))
    dest = dest.resolve()
    job = replace(job, workdir=dest / "out", ca=moved(job.ca), arbiter=party(job.arbiter), guest=party(job.guest),
                  hosts=tuple(party(h) for h in job.hosts))
    return write_job_file(job, dest / "job.toml")


@dataclass
class Party:
    role: str
    popen: subprocess.Popen
    lines: list[tuple[float, str]] = field(default_factory=list)
    ended: float | None = None

    def last(self) -> str:
        return self.lines[-1][1] if self.lines else ""

    def saw(self, text: str) -> float | None:
        return next((t for t, line in list(self.lines) if text in line), None)


def start(path: Path, roles=ROLES, task: str = "train") -> dict[str, Party]:
    parties = {}
    for role in roles:
        cmd = [sys.executable, "-m", f"parties.{role}", str(path), "--task", task]
        popen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, bufsize=1)
        parties[role] = Party(role, popen)
    for p in parties.values():
        threading.Thread(target=_relay, args=(p,), daemon=True).start()
    return parties


def _relay(p: Party) -> None:
    for raw in p.popen.stderr:
        if raw.strip():
            p.lines.append((time.monotonic(), raw.rstrip()))
    p.popen.wait()
    p.ended = time.monotonic()


def wait_for(parties: dict[str, Party], role: str, text: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = parties[role].saw(text)
        if t is not None:
            return t
        if parties[role].ended is not None:
            raise RuntimeError(f"{role} ended before {text!r}: {parties[role].last()}")
        time.sleep(0.005)
    raise TimeoutError(f"{role} did not log {text!r} within {timeout} s")


def finish(parties: dict[str, Party], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in parties.values():
        while p.ended is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if p.ended is None:
            p.popen.kill()
            p.popen.wait()
            time.sleep(0.05)


def weights(job_path: Path) -> np.ndarray:
    job = load_job(job_path)
    g = json.loads((job.output_dir("guest") / "model.json").read_text())
    h = json.loads((job.output_dir("host") / "model.json").read_text())
    return np.concatenate([g["coef"], h["coef"], [g["intercept"]]])


def run_whole(path: Path, task: str = "train", timeout: float = 300) -> dict[str, Party]:
    roles = ROLES if task == "train" else ("host", "guest")
    parties = start(path, roles, task)
    finish(parties, timeout)
    bad = {r: (p.popen.returncode, p.last()) for r, p in parties.items() if p.popen.returncode != 0}
    if bad:
        raise RuntimeError(f"uninterrupted {task} run failed: {bad}")
    return parties


@dataclass
class Trial:
    victim: str
    stage: str                     # as chosen
    observed: str = ""             # as seen from the logs at the moment of the kill
    delay: float = 0.0             # seconds into the stage
    latency: float | None = None   # seconds from the kill to the last other party's exit
    exits: dict = field(default_factory=dict)
    named: bool = False
    tails: dict = field(default_factory=dict)
    resumed: bool | None = None    # None: not applicable
    resume_error: str = ""
    max_diff: float | None = None

    @property
    def ok(self) -> bool:
        return (all(c not in (0, None) for c in self.exits.values()) and self.named
                and self.latency is not None and self.latency < PEER_TIMEOUT and self.resumed is not False)


def observed_stage(parties: dict[str, Party], task: str) -> str:
    g = parties["guest"]
    if task == "predict":
        return "scoring"
    if g.saw(" aligned,") is None:
        return "psi"
    if g.saw("epoch ") is None or not _final_epoch(g):
        return "training"
    return "scoring"


def _final_epoch(g: Party) -> bool:
    for _, line in list(g.lines):
        if "epoch " in line and "/" in line:
            k, n = line.split("epoch ", 1)[1].split()[0].split("/")
            if k == n:
                return True
    return False


def trial(template: Path, trained: Path, ref: np.ndarray, timings: dict, victim: str, stage: str,
          folder: Path, rng: random.Random) -> Trial:
    t = Trial(victim, stage)
    task = "predict" if stage == "scoring" else "train"
    path = copy_job(template, folder, with_output=task == "predict")
    roles = ROLES if task == "train" else ("host", "guest")
    parties = start(path, roles, task)
    try:
        others = [r for r in roles if r != victim]
        # A random moment of the stage while every other party is still in the session (in the
        # uninterrupted run): after that a party that has finished its part rightly exits 0.
        if stage == "psi":
            t0 = wait_for(parties, "guest", "PSI as guest")
            t.delay = rng.uniform(0, timings["psi"])
        else:
            # training: up to the last epoch's line (after it only the millisecond score exchange
            # is left); scoring session: up to the moment the host finished its PSI (after it
            # only the millisecond secure sum of the scores is left).
            key = "scoring_window" if stage == "scoring" else "training_window"
            t0 = wait_for(parties, "guest", "PSI as guest" if stage == "scoring" else " aligned,")
            t.delay = rng.uniform(0.02, 1.0) * timings[key]
        while time.monotonic() < t0 + t.delay:
            time.sleep(0.002)
        t.observed = observed_stage(parties, task)
        done = [r for r in roles if parties[r].popen.poll() is not None]
        late = stage == "training" and t.observed != "training"
        if done or late:       # this run was faster than the reference one: nothing left to check
            finish(parties, 60)
            t.observed = f"late ({', '.join(done) or 'last epoch'} done)"
            return t
        os.kill(parties[victim].popen.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        finish({r: parties[r] for r in others}, PEER_TIMEOUT + 15)
        finish({victim: parties[victim]}, 5)
        t.exits = {r: parties[r].popen.returncode for r in others}
        t.latency = max(parties[r].ended - killed_at for r in others)
        t.tails = {r: parties[r].last() for r in others}
        t.named = all(f"'{victim}'" in parties[r].last() for r in others)
        if all(c == 0 for c in t.exits.values()):
            # every other party had already received all it needed from the victim: the run was
            # ahead of the reference one, the kill came after the victim's part was done
            t.observed, t.latency = "after the victim's last message (others exit 0)", None
    finally:
        for p in parties.values():
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
    if task == "train" and parties["guest"].saw("epoch 1/") is not None and t.observed == "training":
        proc = subprocess.run([sys.executable, "-m", "parties.cli", "run", "--resume", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            t.resumed, t.resume_error = False, (proc.stderr.strip().splitlines() or ["no output"])[-1]
        else:
            diff = float(np.max(np.abs(weights(path) - ref)))
            t.max_diff, t.resumed = diff, diff <= 1e-9
    return t


def prepare(base: Path, n_rows: int, epochs: int) -> tuple[Path, Path, np.ndarray, dict]:
    """The template job, one uninterrupted training (the reference) and a timed scoring session."""
    template = write_job(base / "template", n_rows, epochs)
    trained = copy_job(template, base / "reference")
    t0 = time.monotonic()
    parties = run_whole(trained)
    g = parties["guest"]
    timings = {"psi": g.saw(" aligned,") - g.saw("PSI as guest"),
               "train": g.ended - g.saw(" aligned,"),
               "training_window": g.saw(f"epoch {epochs}/{epochs}") - g.saw(" aligned,"),
               "total": time.monotonic() - t0}
    shutil.copytree(trained.parent / "out", template.parent / "out")
    scoring = copy_job(template, base / "scoring-reference", with_output=True)
    parties = run_whole(scoring, task="predict")
    g = parties["guest"]
    timings["predict"] = g.ended - g.saw("PSI as guest")
    timings["scoring_window"] = parties["host"].saw("PSI done") - g.saw("PSI as guest")
    return template, trained, weights(trained), timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the trial folders")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="vfl-kill-"))
    try:
        template, trained, ref, timings = prepare(base, args.rows, args.epochs)
        print(f"seed {seed}; job: {args.rows} rows, {args.epochs} epochs, 512-bit keys, "
              f"peer_timeout {PEER_TIMEOUT:g} s; uninterrupted: PSI {timings['psi']:.2f} s, "
              f"training {timings['training_window']:.2f} s, scoring session {timings['predict']:.2f} s "
              f"(host's PSI done at {timings['scoring_window']:.2f} s)", flush=True)
        print(f"{'#':>3} {'victim':8} {'stage':9} {'seen':9} {'at s':>5} {'exit s':>6} {'codes':14} "
              f"{'named':5} {'resumed equal':13}", flush=True)
        trials = []
        # every (stage, victim) pair in turn, in a random order, so 20 trials cover them all
        pairs = [(s, v) for s in ("psi", "training", "scoring") for v in ROLES if (s, v) != ("scoring", "arbiter")]
        plan = []
        while len(plan) < args.trials:
            rng.shuffle(pairs)
            plan += pairs
        for i, (stage, victim) in enumerate(plan[:args.trials]):
            tr = trial(template, trained, ref, timings, victim, stage, base / f"trial{i:02d}", rng)
            trials.append(tr)
            res = "n/a" if tr.resumed is None else ("yes" if tr.resumed else f"NO {tr.resume_error or tr.max_diff}")
            if tr.resumed and tr.max_diff is not None:
                res += f" ({tr.max_diff:.1e})"
            if tr.latency is None:
                print(f"{i + 1:3d} {tr.victim:8} {tr.stage:9} {tr.observed}: skipped", flush=True)
                continue
            codes = ",".join(f"{r[0]}={c}" for r, c in tr.exits.items())
            print(f"{i + 1:3d} {tr.victim:8} {tr.stage:9} {tr.observed:9} {tr.delay:5.2f} {tr.latency:6.2f} "
                  f"{codes:14} {'yes' if tr.named else 'NO':5} {res}", flush=True)
            if not tr.named or any(c == 0 for c in tr.exits.values()):
                for r, tail in tr.tails.items():
                    print(f"      {r}: {tail}", flush=True)
            if not args.keep:
                shutil.rmtree(base / f"trial{i:02d}", ignore_errors=True)
        skipped = [t for t in trials if t.latency is None]
        trials = [t for t in trials if t.latency is not None]
        lat = [t.latency for t in trials]
        resumes = [t for t in trials if t.resumed is not None]
        print(f"\nsummary: {len(trials)} trials ({len(skipped)} more skipped: the kill came after the victim's part was done), victims " +
              ", ".join(f"{r} {sum(t.victim == r for t in trials)}" for r in ROLES) +
              "; stages " + ", ".join(f"{s} {sum(t.stage == s for t in trials)}" for s in ("psi", "training", "scoring")))
        print(f"  others exited non-zero: {sum(all(c not in (0, None) for c in t.exits.values()) for t in trials)}"
              f"/{len(trials)}; named the lost peer: {sum(t.named for t in trials)}/{len(trials)}")
        if not lat:                    # every kill came too late: nothing was checked
            print("  no trial checked: every kill came after the victim's part was done (try another --seed)")
            return 1
        print(f"  exit latency after the kill: median {statistics.median(lat):.2f} s, max {max(lat):.2f} s "
              f"(peer_timeout {PEER_TIMEOUT:g} s)")
        print(f"  resumed equal to uninterrupted (1e-9): {sum(bool(t.resumed) for t in resumes)}/{len(resumes)}"
              + (f", largest difference {max(t.max_diff for t in resumes if t.max_diff is not None):.1e}"
                 if any(t.max_diff is not None for t in resumes) else ""))
        failed = [t for t in trials if not t.ok]
        print(f"  trials failing a check: {len(failed)}")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
