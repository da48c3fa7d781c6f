"""Private set intersection (ECDH-PSI) between one guest and one or more hosts.

Every party ends with the sorted intersection of *all* parties' IDs and learns
nothing else about the other sets beyond the sizes listed in
``docs/protocols.md`` (section "Private set intersection"). Read the two
roles next to that section: each step name below is a row of its table.

Notation: ``H(x)`` hashes an ID to a point on Curve25519 (:func:`crypto.psi.hash_ids`),
``a`` is the guest's key, ``b_j`` host ``j``'s key, and ``S^k`` a set of points
each multiplied by ``k``. A set is *fully blinded* once it carries every key,
``a * b_0 * ... * b_{k-1}``: only then are two sets compared.

Who blinds what, in which order (hosts only talk to the guest, so the guest
relays each hop; every party that blinds a set also shuffles it):

* the guest's set ``G``: guest, then host 0, host 1, ..., host k-1;
* host ``i``'s set ``H_i``: host ``i``, then hosts ``i+1, ..., i-1`` (cyclic),
  then the guest last.

The orders are chosen so that no host ever holds two sets carrying the same
keys (the guest's key is on every copy of ``G`` a host sees and on no copy of
a host set; two host sets reach host ``j`` with keys of different cyclic
runs of hosts), so no host can compare anything.

Finally the guest finds the points common to all fully blinded sets and walks
their positions back through each hop's shuffle, asking the host that
shuffled to undo its own permutation (``psi/unshuffle/...``), until each
owner can map positions to its own IDs.

Messages are numpy arrays of raw 32-byte points (``'S32'``) or int64
positions, plus one small control message (``psi/plan``). Every party refuses
a received point that is not on Curve25519 or repeats another (honest points
never do), naming the sender and the step.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from crypto.psi import (POINT_DTYPE, LowOrderPointError, PsiKey, common_positions, hash_ids, on_curve,
                        random_permutation, repeated_points)

from ..protocol.channel import Channel, PeerError, ProtocolError
from ..io.files import write_rows_atomically
from ..io.tables import check_unique_ids
from ..protocol.messages import describe

log = logging.getLogger("vfl.psi")

PROTOCOL = "ecdh-psi/x25519/v2"     # v2: IDs hash to Curve25519 only, not to its twist


class PsiError(ValueError):
    """PSI cannot produce a usable intersection (e.g. no common IDs)."""


# --------------------------------------------------------------------------- guest

def psi_guest(channel: Channel, ids: np.ndarray, hosts: list[str]) -> np.ndarray:
    """Run PSI as the guest; return the sorted IDs common to the guest and all ``hosts``.

    The guest drives the protocol: it relays every host-to-host hop, so hosts
    never need to reach each other. Raises :class:`PsiError` if the
    intersection is empty (after finishing the protocol, so that every host
    gets the same verdict instead of a time-out).
    """
    me = channel.name
    ids = _checked_ids(ids, f"{me}: IDs for PSI")
    hosts = check_hosts(me, hosts)
    n = len(ids)
    t_start = time.perf_counter()
    log.info("%s: PSI as guest with %d IDs and %d host(s): %s", me, n, len(hosts), ", ".join(hosts))
    t = time.perf_counter()
    rho = random_permutation(n)
    hashed = hash_ids(ids[rho])                     # H(G), shuffled: positions say nothing
    for h in hosts:
        channel.send(h, "psi/plan", {"protocol": PROTOCOL, "guest": me, "hosts": hosts})
    key = PsiKey()
    log.info("%s: hashed own %d IDs in %.1f s", me, n, time.perf_counter() - t)
    pos, sizes = guest_exchange(channel, key, hashed, hosts)
    result = np.sort(ids[rho[pos]])
    log.info("%s: PSI total %.1f s", me, time.perf_counter() - t_start)
    if len(result) == 0:
        raise no_common_ids_guest(me, n, hosts, sizes)
    return result


def check_hosts(me: str, hosts: list[str]) -> list[str]:
    hosts = list(hosts)
    if not hosts:
        raise ValueError("psi_guest needs at least one host")
    if len(set(hosts)) != len(hosts) or me in hosts:
        raise ValueError(f"host names must be distinct and differ from the guest {me!r}, got {hosts}")
    return hosts


def no_common_ids_guest(me: str, n: int, hosts: list[str], sizes: dict[str, int]) -> PsiError:
    return PsiError(f"no common IDs between guest {me!r} ({n} IDs) and "
                    + ", ".join(f"host {h!r} ({sizes[h]} IDs)" for h in hosts)
                    + "; check that all parties use the same ID column and format")


def guest_exchange(channel: Channel, key: PsiKey, hashed: np.ndarray, hosts: list[str],
                   pre: str = "psi/", sizes: dict[str, int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """The guest's part of one run over one set of points (the whole set, or one bucket).

    ``hashed`` is the guest's shuffled ``H(G)``; steps are named ``pre + ...``.
    Blinds, relays every hop, compares the fully blinded sets and walks the
    common positions back. Returns the sorted positions in ``hashed`` of the
    points common to all sets, and the size of each host's set. ``sizes``
    (bucketed PSI) holds each host's set size from the first bucket: a later
    bucket of another size is refused (see :func:`_same_size`).
    """
    me = channel.name
    k = len(hosts)
    t = time.perf_counter()
    mine = key.blind(hashed)                        # H(G)^a
    log.debug("%s: blinded own %d points in %.1f s", me, len(hashed), time.perf_counter() - t)

    # trail[owner]: the hosts that blinded and shuffled that set, in order,
    # with the length of what each received, to walk positions back later.
    trail: dict[str, list[tuple[str, int]]] = {me: [], **{h: [] for h in hosts}}
    current: dict[str, np.ndarray] = {}

    def relay(owner: str, host: str, points: np.ndarray) -> None:
        channel.send(host, f"{pre}blind/{owner}", points)
        trail[owner].append((host, len(points)))

    relay(me, hosts[0], mine)                        # G's first host hop can start at once
    got = {}
    for h in hosts:
        step = f"{pre}host_blinded"
        current[h] = _expect_points(channel.recv(h, step), step, h, me)
        got[h] = _same_size(sizes, h, len(current[h]), step, h, me)
    log.debug("%s: received blinded host sets: %s", me, ", ".join(f"{h} {got[h]} IDs" for h in hosts))

    fully_blinded_hosts: dict[str, np.ndarray] = {}
    for r in range(1, k + 1):
        t = time.perf_counter()
        # Round r: host j blinds G if j == r-1 (sent already) and H_{(j-r) mod k} if r < k.
        tasks = {h: ([me] if j == r - 1 else []) for j, h in enumerate(hosts)}
        if r < k:
            for j, h in enumerate(hosts):
                owner = hosts[(j - r) % k]
                relay(owner, h, current[owner])
                tasks[h].append(owner)
        else:
            # Every host set now carries all host keys: add the guest's key
            # while the last host blinds G.
            for h in hosts:         # from the host that blinded it last (its own host_blinded with one host)
                sender, step = (trail[h][-1][0], f"{pre}blinded/{h}") if trail[h] else (h, f"{pre}host_blinded")
                fully_blinded_hosts[h] = _blind_received(key, current[h], f"the set of {h}", me, sender, step)
        for h in hosts:
            for owner in tasks[h]:
                step = f"{pre}blinded/{owner}"
                current[owner] = _expect_points(channel.recv(h, step), step, h, me, n=trail[owner][-1][1])
        if r < k:
            relay(me, hosts[r], current[me])
        log.debug("%s: blinding round %d/%d done in %.1f s", me, r, k, time.perf_counter() - t)

    t = time.perf_counter()
    owners = [me, *hosts]
    try:
        positions = common_positions([current[me], *(fully_blinded_hosts[h] for h in hosts)])
    except ValueError as exc:   # a repeated point: unique IDs cannot produce one
        raise ProtocolError(f"{me}: the fully blinded sets are inconsistent ({exc}; sets in the order "
                            f"{', '.join(owners)}): a peer sent points that are not its blinded IDs") from None
    log.debug("%s: %d common points found in %.1f s", me, len(positions[0]), time.perf_counter() - t)

    t = time.perf_counter()
    mine_pos = None
    for owner, pos in zip(owners, positions):
        for host, received in reversed(trail[owner]):
            channel.send(host, f"{pre}unshuffle/{owner}", pos)
            step = f"{pre}unshuffled/{owner}"
            pos = _expect_positions(channel.recv(host, step), step, host, me, received, count=len(pos))
        if owner == me:
            mine_pos = pos
        else:
            channel.send(owner, f"{pre}result", pos)
    log.debug("%s: positions mapped back in %.1f s", me, time.perf_counter() - t)
    return mine_pos, got


# --------------------------------------------------------------------------- host

def psi_host(channel: Channel, ids: np.ndarray, guest: str, hosts: list[str]) -> np.ndarray:
    """Run PSI as a host; return the sorted IDs common to the guest and all hosts.

    The host only answers the guest: it sends its own set blinded once, then
    blinds and shuffles whatever sets the guest relays (in the order fixed by
    the plan), and undoes its own shuffles on request. Raises
    :class:`PsiError` if the intersection is empty.
    """
    me = channel.name
    ids = _checked_ids(ids, f"{me}: IDs for PSI")
    n = len(ids)
    t_start = time.perf_counter()
    sigma = random_permutation(n)
    hashed = hash_ids(ids[sigma])                   # H(H_j), shuffled: positions say nothing
    plan = channel.recv(guest, "psi/plan")
    hosts = _expect_plan(plan, guest, me, hosts)
    log.info("%s: PSI as host %d of %d with %d IDs, guest %s", me, hosts.index(me) + 1, len(hosts), n, guest)
    pos = host_exchange(channel, PsiKey(), hashed, guest, hosts)
    result = np.sort(ids[sigma[pos]])
    log.info("%s: PSI done: %d common IDs, total %.1f s", me, len(result), time.perf_counter() - t_start)
    if len(result) == 0:
        raise no_common_ids_host(me, n, guest, hosts)
    return result


def no_common_ids_host(me: str, n: int, guest: str, hosts: list[str]) -> PsiError:
    return PsiError(f"no common IDs between host {me!r} ({n} IDs) and guest {guest!r}"
                    + (f" and the other hosts ({', '.join(h for h in hosts if h != me)})" if len(hosts) > 1 else "")
                    + "; check that all parties use the same ID column and format")


def host_exchange(channel: Channel, key: PsiKey, hashed: np.ndarray, guest: str, hosts: list[str],
                  pre: str = "psi/", sizes: dict[str, int] | None = None) -> np.ndarray:
    """A host's part of one run over one set of points (the whole set, or one bucket).

    ``hashed`` is this host's shuffled ``H(H_j)``; steps are named ``pre + ...``.
    Returns the sorted positions in ``hashed`` of the points common to all sets.
    ``sizes`` (bucketed PSI) holds the size of each set this host blinded in the
    first bucket, by owner: a later bucket of another size is refused.
    """
    me = channel.name
    k, j = len(hosts), hosts.index(me)
    t = time.perf_counter()
    channel.send(guest, f"{pre}host_blinded", key.blind(hashed))                 # H(H_j)^b_j
    log.debug("%s: blinded and sent own %d points in %.1f s", me, len(hashed), time.perf_counter() - t)

    perms: dict[str, np.ndarray] = {}       # owner -> my shuffle of that set: out[p] = in[perm[p]]
    for r in range(1, k + 1):
        # Round r: blind G if I am its r-th host, and the set of the host r places before me.
        tasks = ([guest] if j == r - 1 else []) + ([hosts[(j - r) % k]] if r < k else [])
        for owner in tasks:
            step = f"{pre}blind/{owner}"
            points = _expect_points(channel.recv(guest, step), step, guest, me)
            _same_size(sizes, owner, len(points), step, guest, me)
            t = time.perf_counter()
            perm = random_permutation(len(points))
            channel.send(guest, f"{pre}blinded/{owner}", _blind_received(key, points, step, me, guest, step)[perm])
            perms[owner] = perm
            log.debug("%s: blinded %d points of %s's set in %.1f s", me, len(points), owner,
                      time.perf_counter() - t)

    result = None
    for owner in [guest, *hosts]:
        if owner == me:
            step = f"{pre}result"
            result = _expect_positions(channel.recv(guest, step), step, guest, me, len(hashed))
        else:
            step = f"{pre}unshuffle/{owner}"
            perm = perms[owner]
            pos = _expect_positions(channel.recv(guest, step), step, guest, me, len(perm))
            channel.send(guest, f"{pre}unshuffled/{owner}", np.sort(perm[pos]))
    return result


# --------------------------------------------------------------------------- output

def write_intersection(path: str | Path, ids: np.ndarray) -> None:
    """Write the intersection as a one-column CSV with header ``id``.

    Written through the csv module (not pandas) so that every ID is kept as
    the exact text it was, e.g. ``007`` stays ``007``; atomically (a crash
    leaves the old file or the new one).
    """
    write_rows_atomically(Path(path), ["id"], ([str(x)] for x in ids))


# --------------------------------------------------------------------------- checks

def _checked_ids(ids: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{source}: IDs must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in ("U", "O"):
        raise TypeError(f"{source}: IDs must be text, got dtype {arr.dtype}; read them with vfl.io.tables.read_ids")
    check_unique_ids(arr, source)
    return arr


def _expect_plan(plan, guest: str, me: str, hosts: list[str], protocol: str = PROTOCOL) -> list[str]:
    """The plan's host list, checked against the job's ``hosts``: a guest naming only some hosts
    would run PSI with each alone and learn every pairwise overlap, not only the intersection."""
    def refused(message: str) -> PeerError:
        return PeerError(f"{me}: psi/plan from {guest!r} {message}", peer=guest, step="psi/plan")
    if not isinstance(plan, dict) or plan.get("protocol") != protocol:
        got = plan.get("protocol") if isinstance(plan, dict) else describe(plan)
        raise refused(f"announces protocol {got!r}, this party speaks {protocol!r}")
    if set(plan) != {"protocol", "guest", "hosts"}:
        raise refused(f"must be exactly {{protocol, guest, hosts}}, got {{{', '.join(sorted(plan))[:200]}}}")
    if plan.get("guest") != guest:
        raise refused(f"names {plan.get('guest')!r} as the guest")
    named = plan.get("hosts")
    if named != list(hosts):
        got = repr(named) if len(repr(named)) <= 200 else describe(named)
        raise refused(f"names the hosts {got}, not the job's {list(hosts)!r} in that order: PSI must run with "
                      "all of them at once")
    return list(hosts)


def _blind_received(key: PsiKey, points: np.ndarray, what: str, me: str, sender: str, step: str) -> np.ndarray:
    """Blind points that ``sender`` sent at ``step``; a small-order point is its fault, and so are
    two points that become one: distinct points that differ by a small-order point (``P`` and
    ``P + T``) pass :func:`_expect_points` but meet once the clamped key clears ``T``."""
    try:
        blinded = key.blind(points)
    except LowOrderPointError as exc:
        raise PeerError(f"{me}: {what}: {exc} (from {sender!r}, {step})", peer=sender, step=step) from None
    repeats = repeated_points(blinded)
    if repeats:
        raise PeerError(f"{me}: {what}: {repeats} points from {sender!r} ({step}) become equal to others once "
                        "blinded (they differ by a point of small order), so they are not blinded IDs",
                        peer=sender, step=step)
    return blinded


def _expect_points(msg, step: str, sender: str, me: str, n: int | None = None) -> np.ndarray:
    """Distinct points on Curve25519 in a 1-D 'S32' array (of length ``n`` if given), else a
    PeerError naming the step. Honest points are all on the curve (hashes to it, and X25519
    products of them), so one off it (on the twist, or not canonical: ``u >= p``) is a deviation,
    and would carry a public bit through every later blinding; blinded unique IDs never repeat."""
    if not isinstance(msg, np.ndarray) or msg.dtype != POINT_DTYPE or msg.ndim != 1:
        what = describe(msg) if isinstance(msg, (np.ndarray, dict)) else type(msg).__name__
        raise PeerError(f"{me}: {step} from {sender!r} must be a 1-D array of 32-byte points (dtype S32), got {what}",
                        peer=sender, step=step)
    if n is not None and len(msg) != n:
        raise PeerError(f"{me}: {step} from {sender!r} has {len(msg)} points, expected {n} (one per point sent)",
                        peer=sender, step=step)
    off = np.flatnonzero(~on_curve(msg))
    if len(off):
        raise PeerError(f"{me}: {step} from {sender!r} has {len(off)} points off Curve25519 (on its twist, u = 0 "
                        f"or u >= 2^255-19; first: point {int(off[0])}), so they are not blinded IDs",
                        peer=sender, step=step)
    repeats = repeated_points(msg)
    if repeats:
        raise PeerError(f"{me}: {step} from {sender!r} repeats {repeats} points, so they are not blinded unique IDs",
                        peer=sender, step=step)
    return msg


def _same_size(sizes: dict[str, int] | None, owner: str, n: int, step: str, sender: str, me: str) -> int:
    """``n``, the size of ``owner``'s set in this bucket, if it equals the size in the first bucket
    (recorded in ``sizes`` then; ``sizes`` None: a single run, any size). Every bucket of a party is
    padded to one size, so another size is a deviation, and an unbounded one would make every other
    party blind it, past their memory budgets."""
    if sizes is None:
        return n
    first = sizes.setdefault(owner, n)
    if n != first:
        raise PeerError(f"{me}: {step} from {sender!r} has {n} points of {owner}'s set, but {first} in the first "
                        "bucket: every bucket of a party is padded to the same size", peer=sender, step=step)
    return n


def _expect_positions(msg, step: str, sender: str, me: str, size: int,
                      count: int | None = None) -> np.ndarray:
    """Sorted distinct int positions in ``[0, size)`` (``count`` of them if given)."""
    if not isinstance(msg, np.ndarray) or msg.ndim != 1 or msg.dtype.kind not in "iu":
        what = describe(msg) if isinstance(msg, (np.ndarray, dict)) else type(msg).__name__
        raise PeerError(f"{me}: {step} from {sender!r} must be a 1-D integer array, got {what}", peer=sender,
                        step=step)
    if count is not None and len(msg) != count:
        raise PeerError(f"{me}: {step} from {sender!r} has {len(msg)} positions, expected {count}", peer=sender,
                        step=step)
    pos = msg.astype(np.int64)
    if len(pos) and (pos[0] < 0 or pos[-1] >= size or (np.diff(pos) <= 0).any()):
        raise PeerError(f"{me}: {step} from {sender!r} must hold sorted distinct positions in [0, {size})",
                        peer=sender, step=step)
    return pos
