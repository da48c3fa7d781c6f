"""Writing results so that nothing is lost half-way: write aside, then rename."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj: dict, indent: int | None = 2) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent))
    tmp.replace(path)
