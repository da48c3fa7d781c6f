from __future__ import annotations

import threading
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_job(tmp_path: Path, guest_csv: Path, host_csvs: list[Path], model: str = "", job: str = "",
              label: str = "y") -> Path:
    """A job file for tests: parties on loopback, data given by path."""
    hosts = "".join(
        f'[[hosts]]\nname = "host{i}"\naddress = "127.0.0.1:{19202 + i}"\ndata = "{p}"\n'
        for i, p in enumerate(host_csvs))
    text = (f'[job]\nworkdir = "{tmp_path / "out"}"\nseed = 1\n{job}\n'
            f'[arbiter]\naddress = "127.0.0.1:19200"\n'
            f'[guest]\nname = "guest"\naddress = "127.0.0.1:19201"\ndata = "{guest_csv}"\nlabel_column = "{label}"\n'
            f'{hosts}[model]\nkey_bits = 512\nallow_short_keys = true\n{model}\n')
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


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
