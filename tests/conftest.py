from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_job(tmp_path: Path, guest, hosts: list, model: dict | None = None, label: str = "y",
             guest_keys: dict | None = None, host_keys: dict | None = None, **job):
    """A job for tests, built through the API: parties ``guest`` and ``host0``, ``host1``, ... on
    free loopback ports, data as paths or DataFrames, 512-bit keys, outputs under ``tmp_path/out``.
    ``model`` adds [model] keys; ``guest_keys``/``host_keys`` (host name -> keys) add party keys;
    other keywords go to :class:`vfl.Job` (``preprocess``, ``seed``, ...)."""
    import vfl
    host_keys = host_keys or {}
    parties = [vfl.Party(f"host{i}", h, **host_keys.get(f"host{i}", {})) for i, h in enumerate(hosts)]
    job = {"seed": 1, "workdir": tmp_path / "out", **job}
    return vfl.Job(vfl.Party("guest", guest, label_column=label, **(guest_keys or {})), parties,
                   model={"key_bits": 512, "allow_short_keys": True, **(model or {})}, **job)


def write_job(tmp_path: Path, guest, hosts: list, **kwargs) -> Path:
    """:func:`make_job`, written to ``tmp_path/job.toml`` (the file ``vfl`` reads)."""
    return make_job(tmp_path, guest, hosts, **kwargs).to_toml(tmp_path / "job.toml")


def rechain_ledger(path: Path, entries: list[dict]) -> None:
    """Write ``entries`` as a ledger with a valid hash chain: a forgery only the audit's other rules
    can catch."""
    import json
    from vfl.protocol.ledger import GENESIS, line_hash
    prev = GENESIS
    with path.open("w") as f:
        for e in entries:
            e["prev"] = prev
            e["hash"] = prev = line_hash(prev, e)
            f.write(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n")


def write_tables(tmp_path: Path, guest, hosts) -> tuple[Path, list[Path]]:
    """Write a guest frame and host frames as g.csv, h0.csv, h1.csv, ... in ``tmp_path``."""
    guest.to_csv(tmp_path / "g.csv", index=False)
    paths = [tmp_path / f"h{i}.csv" for i in range(len(hosts))]
    for h, p in zip(hosts, paths):
        h.to_csv(p, index=False)
    return tmp_path / "g.csv", paths


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "default_credit_hetero_guest.csv").is_file():
        pytest.skip("../shared/data is not available in this checkout")
    return SHARED_DATA


def run_parties(net, calls: dict) -> None:
    """Run each party's call in its own thread over ``net``; re-raise the first failure."""
    errors = []

    def run(name):
        try:
            calls[name]()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            net.abort(f"{name}: {exc!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ------------------------------------------------------------ `vfl audit` on every job the suite runs
AUDITED: dict[str, bool] = {}     # job file -> passed
_OWN_DIRS: set[Path] = set()      # every test's own tmp_path
_SETTLED: set[Path] = set()       # folders of fixtures (tmp_path_factory) already audited at their module's end
_SEEN: dict[Path, tuple] = {}     # a shared job an audit_fails test changed -> its files as it left them


def _jobs(folder: Path) -> list:
    """(job file, job) for every job file under ``folder`` whose workdir holds ledgers."""
    from vfl.job.config import ConfigError, load_job
    out = []
    for path in sorted(folder.rglob("*.toml")):
        try:
            job = load_job(path)
        except (ConfigError, OSError):
            continue
        if any(job.workdir.glob("*/ledger.jsonl")):
            out.append((path, job))
    return out


def _audit(path: Path, job, label: str) -> str | None:
    """``vfl audit`` on one job: None when it passes, else the failure's report."""
    from vfl.protocol.audit import audit_job
    ok, text = audit_job(job)
    AUDITED[label] = ok
    return None if ok else f"vfl audit failed on {path}:\n{text}"


def _signature(path: Path, job) -> tuple:
    """What the audit of ``job`` reads (its job file, ledgers and the parties' JSON reports), as it is now."""
    files = [path, *(f for f in job.workdir.rglob("*") if f.suffix in (".jsonl", ".json"))]
    return tuple(sorted((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()))


def _shared_jobs(factory) -> list:
    """(job file, job) of the module's fixtures (``tmp_path_factory.mktemp``): under every folder of the
    session's base that is no test's own tmp_path and was not audited at an earlier module's end (a
    module-scoped fixture's folder is used by its module only)."""
    base = factory.getbasetemp()
    return [found for d in sorted(base.iterdir())       # not the "<name>current" links pytest adds
            if d.is_dir() and not d.is_symlink() and d not in _OWN_DIRS and d not in _SETTLED
            for found in _jobs(d)]


@pytest.fixture(autouse=True)
def audit_every_job(request, tmp_path, tmp_path_factory):
    """After each test, run ``vfl audit`` on every job it ran (every job file under its tmp_path whose
    workdir holds ledgers): each must pass. Tests that break a ledger or a protocol on purpose say so
    with ``@pytest.mark.audit_fails``; jobs of the module's fixtures they change are taken as they
    leave them (:func:`audit_shared_jobs` audits the others)."""
    _OWN_DIRS.add(tmp_path)
    exempt = request.node.get_closest_marker("audit_fails") is not None
    before = {path: _signature(path, job) for path, job in _shared_jobs(tmp_path_factory)} if exempt else {}
    yield
    if exempt:
        for path, job in _shared_jobs(tmp_path_factory):
            if before.get(path) != (signature := _signature(path, job)):
                _SEEN[path] = signature
        return
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.passed:
        return
    failures = [f for path, job in _jobs(tmp_path)
                if (f := _audit(path, job, f"{request.node.nodeid}:{path.relative_to(tmp_path)}"))]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def audit_shared_jobs(request, tmp_path_factory):
    """After each test module, run ``vfl audit`` on the jobs of its module-scoped fixtures (folders from
    ``tmp_path_factory``), but those an ``audit_fails`` test left as they still are: the jobs a module's
    tests share must pass too (else an error at the module's last teardown)."""
    yield
    base = tmp_path_factory.getbasetemp()
    failures = [f for path, job in _shared_jobs(tmp_path_factory)
                if _SEEN.get(path) != _signature(path, job)
                and (f := _audit(path, job, f"{request.node.nodeid} [shared]:{path.relative_to(base)}"))]
    _SETTLED.update(d for d in base.iterdir() if d not in _OWN_DIRS)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


def pytest_sessionfinish(session):
    """Under pytest-xdist, hand this worker's audit results to the controller, which prints the summary."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["audited"] = json.dumps(AUDITED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """(pytest-xdist, in the controller) a worker ended: add the jobs it audited to the summary."""
    AUDITED.update(json.loads(getattr(node, "workeroutput", {}).get("audited", "{}")))


def pytest_terminal_summary(terminalreporter):
    if AUDITED:
        failed = sum(not ok for ok in AUDITED.values())
        terminalreporter.write_line(f"vfl audit: {len(AUDITED)} job(s) run by the tests audited, "
                                    f"{len(AUDITED) - failed} passed, {failed} failed")
