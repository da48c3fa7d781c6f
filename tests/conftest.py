from __future__ import annotations

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


@pytest.fixture(autouse=True)
def audit_every_job(request, tmp_path):
    """After each test, run ``vfl audit`` on every job it ran (every job file under its tmp_path
    whose workdir holds ledgers): each must pass. Tests that break a ledger or a protocol on
    purpose say so with ``@pytest.mark.audit_fails``."""
    yield
    if request.node.get_closest_marker("audit_fails"):
        return
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.passed:
        return
    from vfl.job.config import ConfigError, load_job
    from vfl.protocol.audit import audit_job
    for path in sorted(tmp_path.rglob("*.toml")):
        try:
            job = load_job(path)
        except (ConfigError, OSError):
            continue
        if not any(job.workdir.glob("*/ledger.jsonl")):
            continue
        ok, text = audit_job(job)
        AUDITED[f"{request.node.nodeid}:{path.relative_to(tmp_path)}"] = ok
        if not ok:
            pytest.fail(f"vfl audit failed on {path}:\n{text}", pytrace=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


def pytest_terminal_summary(terminalreporter):
    if AUDITED:
        failed = sum(not ok for ok in AUDITED.values())
        terminalreporter.write_line(f"vfl audit: {len(AUDITED)} job(s) run by the tests audited, "
                                    f"{len(AUDITED) - failed} passed, {failed} failed")
