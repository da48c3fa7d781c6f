"""A guest + hosts + arbiter job on loopback over mutual TLS, built through the API, for tests and
benchmarks; and one party process of it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vfl
from parties.certs import make_certs

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("arbiter", "host", "guest")


def tls_job(folder: Path, guest, hosts: list, *, model: dict | None = None, network: dict | None = None,
            label: str = "y", host_names: list[str] | None = None, **job) -> Path:
    """``folder/job.toml``: parties ``guest``, ``host`` (or ``host_names``) and ``arbiter`` on free
    loopback ports, data as paths or DataFrames, every party's certificate (and the CA) in
    ``folder/certs`` and named in the file. Other keywords go to :class:`vfl.Job`."""
    certs = folder / "certs"
    names = host_names or (["host"] if len(hosts) == 1 else [f"host{i}" for i in range(len(hosts))])

    def party(name, data=None, **keys):
        return vfl.Party(name, data, cert=certs / f"{name}.pem", key=certs / f"{name}-key.pem", **keys)
    made = vfl.Job(party("guest", guest, label_column=label), [party(n, h) for n, h in zip(names, hosts)],
                   arbiter=party("arbiter"), ca=certs / "ca.pem", model=model, network=network,
                   **{"workdir": folder / "out", "seed": 1, **job})
    make_certs(made.config, certs)
    return made.to_toml(folder / "job.toml")


def write_job(folder: Path, name: str, guest: Path, host: Path, model: dict, label: str = "y",
              network: dict | None = None) -> Path:
    """:func:`tls_job` with one host (pass ``folder/certs`` to the parties with ``--tls-dir``, or not)."""
    return tls_job(folder, guest, [host], model=model, network=network, label=label, name=name)


def start(path: Path, role: str, env: dict | None = None, prefix: list[str] | None = None) -> subprocess.Popen:
    """One party process of the job (``prefix``, e.g. ``["taskset", "-c", "0"]``, runs before it)."""
    cmd = [sys.executable, "-m", f"parties.{role}", str(path), "--tls-dir", str(path.parent / "certs")]
    return subprocess.Popen((prefix or []) + cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
