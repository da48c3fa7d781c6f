"""The interface every backend implements, apart from the package so that backends can import it."""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

MIN_PARALLEL = 256   # fewer elements than this stay in the calling process


class BackendUnavailable(RuntimeError):
    """The requested backend cannot start here (e.g. Ray is not installed)."""


class Backend(Protocol):
    """What the heavy loops need from wherever they run."""

    name: str
    remote: bool   # shards leave this process even with one worker (a Ray cluster's workers are elsewhere)

    def workers(self) -> int:
        """How many shards can run at once (callers split work into about this many or a few times more)."""

    def map(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
        """``[fn(*args) for args in arg_tuples]``, run on the workers; results in input order.

        ``fn`` must be a top-level function of an importable module; the
        original exception of a failed shard is re-raised here.
        """

    def warm_up(self) -> None:
        """Start the workers now rather than on the first large call."""

    def shutdown(self) -> None:
        """Stop the workers (the local pool restarts on the next call)."""
