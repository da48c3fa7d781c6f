"""A guest + one host + arbiter job on loopback, as three OS processes over TLS, for benchmarks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from parties.certs import make_certs
from parties.demo import free_ports
from vfl.job.config import load_job

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("arbiter", "host", "guest")


def write_job(folder: Path, name: str, guest: Path, host: Path, model: dict, label: str = "y",
              network: dict | None = None) -> Path:
    """``folder/job.toml`` with free loopback ports, ``[model]`` from ``model``, and every party's
    certificate in ``folder/certs`` (pass it to the parties with ``--tls-dir``)."""
    ports = dict(zip(ROLES, free_ports(3)))

    def toml(v):
        return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)

    lines = [f'[job]\nname = "{name}"\nworkdir = "{folder / "out"}"\nseed = 1\n',
             f'[arbiter]\nname = "arbiter"\naddress = "127.0.0.1:{ports["arbiter"]}"\n',
             f'[guest]\nname = "guest"\naddress = "127.0.0.1:{ports["guest"]}"\ndata = "{guest}"\n'
             f'label_column = "{label}"\n',
             f'[[hosts]]\nname = "host"\naddress = "127.0.0.1:{ports["host"]}"\ndata = "{host}"\n',
             "[model]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in model.items())]
    if network:
        lines.append("[network]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in network.items()))
    path = folder / "job.toml"
    path.write_text("\n".join(lines))
    make_certs(load_job(path), folder / "certs")
    return path


def start(path: Path, role: str, env: dict | None = None, prefix: list[str] | None = None) -> subprocess.Popen:
    """One party process of the job (``prefix``, e.g. ``["taskset", "-c", "0"]``, runs before it)."""
    cmd = [sys.executable, "-m", f"parties.{role}", str(path), "--tls-dir", str(path.parent / "certs")]
    return subprocess.Popen((prefix or []) + cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
