"""Bucketed PSI: the ECDH-PSI of :mod:`vfl.psi.roles`, run bucket by bucket in bounded memory.

Why: one run over whole sets holds every ID's points at once (1M x 1M took
825 MB per party; 100M could not run). Here every party splits its IDs by a
keyed hash of ``H(id)`` into ``B`` buckets and runs the same protocol on each
bucket in turn, so it holds one bucket's points at a time; the rest of its IDs
wait as 40-byte records in memory or, beyond a budget, in files under its own
work folder (:mod:`vfl.psi.buckets`). An ID lands in the same bucket at every
party, so the union of the per-bucket intersections is exactly the
intersection of the whole sets.

Steps, in the order of ``docs/protocols.md`` section 1 ("Bucketed PSI"):

1. every party reads, validates and hashes its IDs once, and refuses
   duplicates before it sends anything;
2. ``psi/plan``: the guest announces the protocol and the hosts;
3. ``psi/buckets/propose``: each host asks for a bucket count (from its size
   and memory budget) and commits to a fresh nonce;
4. ``psi/buckets/open``: the guest fixes ``B`` (the largest count asked for,
   its own included), reveals its nonce and relays all commitments;
5. if ``B > 1``: ``psi/buckets/reveal`` (each host opens its commitment) and
   ``psi/buckets/nonces`` (the guest relays all host nonces, each host checks
   them against the commitments). The key hashes every nonce, so no party can
   choose it alone;
6. per bucket ``b``: the steps of :mod:`vfl.psi.roles` named ``psi/b<b>/...``
   (just ``psi/...`` when ``B = 1``), on the bucket's points padded with random
   points to a size fixed by the party's ``n`` and ``B`` alone
   (:func:`crypto.psi.padded_size`), so bucket sizes say nothing about which
   IDs a party holds. Every receiver refuses a bucket of a set whose size
   differs from that set's first bucket.

Each party ends with the sorted intersection of all parties' IDs, the same
array :func:`vfl.psi.psi_guest` / :func:`vfl.psi.psi_host` return.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from crypto.psi import (PsiKey, bucket_key, bucket_nonce, commitment, hash_ids, padded_size,
                        random_permutation, random_points, NONCE_BYTES)

from ..protocol.channel import Channel, PeerError, ProtocolError
from .buckets import IdArray, IdSource, Spill, into_buckets, read_checked
from .roles import (PsiError, _expect_plan, check_hosts, guest_exchange, host_exchange, no_common_ids_guest,
                    no_common_ids_host)

log = logging.getLogger("vfl.psi")

PROTOCOL_BUCKETED = "ecdh-psi/x25519/bucketed/v2"     # v2: IDs hash to Curve25519 only, not to its twist
DEFAULT_MEMORY_MB = 256
"""Memory for one bucket's points and shuffles (the rest of the party comes on top)."""
BYTES_PER_POINT = 240
"""Measured working memory per point of a bucket (points, copies, shuffles, the sort)."""
MAX_BUCKETS = 1 << 16
MIN_BUCKET_IDS = 1024
"""With several hosts a host accepts more buckets than it asked for only while each would still hold
this many of its IDs: the guest learns every Venn-region size per bucket, and small buckets would
tell it which of its own IDs the other hosts hold (docs/protocols.md, section 1)."""
SPILL_FRACTION = 0.25
"""Hash records (40 bytes per ID) beyond this share of the budget wait in files (two such
stores exist while records move from the first split to the buckets)."""


def _spill_limit(memory_mb: int) -> int:
    return int((memory_mb << 20) * SPILL_FRACTION)


def buckets_for(n: int, sets: int, memory_mb: int = DEFAULT_MEMORY_MB) -> int:
    """How many buckets keep one bucket of ``sets`` sets of about ``n`` IDs within
    ``memory_mb`` (the guest holds every party's set of a bucket, a host two)."""
    if memory_mb < 1:
        raise ValueError(f"the PSI memory budget must be at least 1 MB, got {memory_mb}")
    per_bucket = max(1, (memory_mb << 20) // (BYTES_PER_POINT * max(1, sets)))
    return int(min(MAX_BUCKETS, max(1, math.ceil(n * 1.02 / per_bucket))))


def _wish(buckets: int | None, n: int, sets: int, memory_mb: int) -> int:
    if buckets is None:
        return buckets_for(n, sets, memory_mb)
    if not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be an integer in [1, {MAX_BUCKETS}], got {buckets!r}")
    return buckets


def _source(ids: np.ndarray | IdSource, me: str) -> IdSource:
    return ids if isinstance(ids, IdSource) else IdArray(ids, f"{me}: IDs for PSI")


# --------------------------------------------------------------------------- guest

def bucketed_psi_guest(channel: Channel, ids: np.ndarray | IdSource, hosts: list[str], *,
                       workdir: Path | None = None, memory_mb: int = DEFAULT_MEMORY_MB,
                       buckets: int | None = None) -> np.ndarray:
    """Run bucketed PSI as the guest; return the sorted IDs common to the guest and all ``hosts``.

    ``ids`` is an array of text IDs or an :class:`~vfl.psi.buckets.IdSource`
    (e.g. :class:`~vfl.psi.buckets.IdFile`, read in chunks). ``workdir`` is
    where hashes are kept beyond ``memory_mb`` (the system's temporary folder
    if None). Raises :class:`~vfl.psi.roles.PsiError` if the intersection is
    empty, after the last bucket, so every party gets the same verdict.
    """
    _wish(buckets, 0, 1, memory_mb)             # bad arguments fail before anything is read
    me = channel.name
    source = _source(ids, me)
    hosts = check_hosts(me, hosts)
    k = len(hosts)
    t_start = time.perf_counter()
    local, n = read_checked(source, workdir, _spill_limit(memory_mb))
    try:
        log.info("%s: PSI as guest with %d IDs (read and hashed in %.1f s) and %d host(s): %s", me, n,
                 time.perf_counter() - t_start, k, ", ".join(hosts))
        for h in hosts:
            channel.send(h, "psi/plan", {"protocol": PROTOCOL_BUCKETED, "guest": me, "hosts": hosts})
        mine = _wish(buckets, n, k + 1, memory_mb)
        nbuckets, key, wishes = _agree_guest(channel, hosts, mine)
    except BaseException:
        local.close()
        raise
    with into_buckets(local, key, nbuckets, workdir, _spill_limit(memory_mb)) as spill:
        size = _padded(spill, n, me)
        log.info("%s: %d bucket(s) of %d points each (%d IDs, padded)", me, nbuckets, size, n)
        psi_key = PsiKey()
        found, sizes, first = [], {h: 0 for h in hosts}, {}
        for b in range(nbuckets):
            t = time.perf_counter()
            rec = spill.part(b)
            spill.drop(b)
            points, rho = _padded_shuffled(rec, size)
            pre = _prefix(b, nbuckets)
            pos, got = guest_exchange(channel, psi_key, points, hosts, pre, first)
            if b == 0:
                _check_wishes(me, wishes, got, mine, nbuckets)
            # the guest's own positions come back from the first host, through every host's unshuffle
            found.append(_own_records(rec, rho[pos], me, hosts[0], f"{pre}unshuffled/{me}",
                                      "" if len(hosts) == 1 else " (or a host before it in the walk back)"))
            for h in hosts:
                sizes[h] += got[h]
            _log_bucket(me, b, nbuckets, len(found[-1]), t)
    result = _ids_of(source, np.concatenate(found), me)
    log.info("%s: PSI done: %d common IDs, total %.1f s", me, len(result), time.perf_counter() - t_start)
    if len(result) == 0:
        # with several buckets the guest sees only padded sizes: about n_h * 1.01 or more
        raise no_common_ids_guest(me, n, hosts, {h: sizes[h] if nbuckets == 1 else f"at most {sizes[h]}"
                                                 for h in hosts})
    return result


def _agree_guest(channel: Channel, hosts: list[str], mine: int) -> tuple[int, bytes, dict[str, int]]:
    """Steps 3-5: the bucket count, the bucket key, and the count each host asked for."""
    me = channel.name
    wishes, commits = {}, {}
    for h in hosts:
        msg = channel.recv(h, "psi/buckets/propose")
        if not isinstance(msg, dict) or set(msg) != {"buckets", "commit"}:
            raise _refused(me, "psi/buckets/propose", h, "must be {buckets, commit}")
        wishes[h] = _count(msg["buckets"], "psi/buckets/propose", h, me)
        commits[h] = _hex32(msg["commit"], "psi/buckets/propose", h, me)
    nbuckets = max(mine, *wishes.values())
    nonce = bucket_nonce()
    for h in hosts:
        channel.send(h, "psi/buckets/open", {"buckets": nbuckets, "nonce": nonce.hex(),
                                             "commits": [commits[x].hex() for x in hosts]})
    if nbuckets == 1:
        return 1, b"", wishes
    nonces = {}
    for h in hosts:
        msg = channel.recv(h, "psi/buckets/reveal")
        if not isinstance(msg, dict) or set(msg) != {"nonce"}:
            raise _refused(me, "psi/buckets/reveal", h, "must be {nonce}")
        nonces[h] = _hex32(msg["nonce"], "psi/buckets/reveal", h, me)
        if commitment(nonces[h]) != commits[h]:
            raise _refused(me, "psi/buckets/reveal", h, "does not open its commitment")
    for h in hosts:
        channel.send(h, "psi/buckets/nonces", {"nonces": [nonces[x].hex() for x in hosts]})
    return nbuckets, bucket_key([nonce, *(nonces[x] for x in hosts)], nbuckets), wishes


# --------------------------------------------------------------------------- host

def bucketed_psi_host(channel: Channel, ids: np.ndarray | IdSource, guest: str, hosts: list[str], *,
                      workdir: Path | None = None, memory_mb: int = DEFAULT_MEMORY_MB,
                      buckets: int | None = None) -> np.ndarray:
    """Run bucketed PSI as a host; return the sorted IDs common to the guest and all hosts.

    Arguments as for :func:`bucketed_psi_guest`. Raises
    :class:`~vfl.psi.roles.PsiError` if the intersection is empty.
    """
    _wish(buckets, 0, 1, memory_mb)
    me = channel.name
    source = _source(ids, me)
    t_start = time.perf_counter()
    local, n = read_checked(source, workdir, _spill_limit(memory_mb))
    try:
        hosts = _expect_plan(channel.recv(guest, "psi/plan"), guest, me, hosts, PROTOCOL_BUCKETED)
        log.info("%s: PSI as host %d of %d with %d IDs (read and hashed in %.1f s), guest %s", me,
                 hosts.index(me) + 1, len(hosts), n, time.perf_counter() - t_start, guest)
        nbuckets, key = _agree_host(channel, guest, hosts, _wish(buckets, n, 2, memory_mb), n)
    except BaseException:
        local.close()
        raise
    with into_buckets(local, key, nbuckets, workdir, _spill_limit(memory_mb)) as spill:
        size = _padded(spill, n, me)
        log.info("%s: %d bucket(s) of %d points each (%d IDs, padded)", me, nbuckets, size, n)
        psi_key = PsiKey()
        found, first = [], {}
        for b in range(nbuckets):
            t = time.perf_counter()
            rec = spill.part(b)
            spill.drop(b)
            points, sigma = _padded_shuffled(rec, size)
            pre = _prefix(b, nbuckets)
            pos = host_exchange(channel, psi_key, points, guest, hosts, pre, first)
            found.append(_own_records(rec, sigma[pos], me, guest, f"{pre}result"))
            _log_bucket(me, b, nbuckets, len(found[-1]), t)
    result = _ids_of(source, np.concatenate(found), me)
    log.info("%s: PSI done: %d common IDs, total %.1f s", me, len(result), time.perf_counter() - t_start)
    if len(result) == 0:
        raise no_common_ids_host(me, n, guest, hosts)
    return result


def _agree_host(channel: Channel, guest: str, hosts: list[str], mine: int, n: int) -> tuple[int, bytes]:
    me = channel.name
    j = hosts.index(me)
    nonce = bucket_nonce()
    channel.send(guest, "psi/buckets/propose", {"buckets": mine, "commit": commitment(nonce).hex()})
    msg = channel.recv(guest, "psi/buckets/open")
    if not isinstance(msg, dict) or set(msg) != {"buckets", "nonce", "commits"}:
        raise _refused(me, "psi/buckets/open", guest, "must be {buckets, nonce, commits}")
    nbuckets = _count(msg["buckets"], "psi/buckets/open", guest, me)
    if nbuckets < mine:
        raise _refused(me, "psi/buckets/open", guest, f"sets {nbuckets} buckets, fewer than the {mine} this host "
                       "asked for")
    if len(hosts) > 1 and nbuckets > max(mine, n // MIN_BUCKET_IDS):
        raise _refused(me, "psi/buckets/open", guest,
                       f"sets {nbuckets} buckets, more than the {mine} this host asked for and than its {n:,} IDs "
                       f"fill with {MIN_BUCKET_IDS:,} each: with several hosts the guest learns the overlaps' sizes "
                       "per bucket, and small buckets would tell it which of its IDs the other hosts hold, so each "
                       f"host needs at least {MIN_BUCKET_IDS:,} IDs per bucket ({nbuckets * MIN_BUCKET_IDS:,} for "
                       f"{nbuckets}). For fewer buckets raise [guest] psi_memory_mb in the job file (the guest's "
                       "PSI memory, from which it asks for its bucket count)")
    guest_nonce = _hex32(msg["nonce"], "psi/buckets/open", guest, me)
    commits = msg["commits"]
    if not isinstance(commits, list) or len(commits) != len(hosts):
        raise _refused(me, "psi/buckets/open", guest, "must list one commitment per host")
    commits = [_hex32(c, "psi/buckets/open", guest, me) for c in commits]
    if commits[j] != commitment(nonce):
        raise _refused(me, "psi/buckets/open", guest, "relays a wrong commitment for this host")
    if nbuckets == 1:
        return 1, b""
    channel.send(guest, "psi/buckets/reveal", {"nonce": nonce.hex()})
    msg = channel.recv(guest, "psi/buckets/nonces")
    if not isinstance(msg, dict) or set(msg) != {"nonces"} or not isinstance(msg["nonces"], list) \
            or len(msg["nonces"]) != len(hosts):
        raise _refused(me, "psi/buckets/nonces", guest, "must list one nonce per host")
    nonces = [_hex32(x, "psi/buckets/nonces", guest, me) for x in msg["nonces"]]
    for h, r, c in zip(hosts, nonces, commits):
        if commitment(r) != c:
            raise _refused(me, "psi/buckets/nonces", guest, f"relays a bad nonce: the nonce of {h!r} does not open "
                           "its commitment")
    return nbuckets, bucket_key([guest_nonce, *nonces], nbuckets)


# --------------------------------------------------------------------------- shared

def _check_wishes(me: str, wishes: dict[str, int], padded: dict[str, int], mine: int, nbuckets: int) -> None:
    """The guest's bound on the bucket count by the set sizes: a host that asked for more buckets than
    the guest (so set the count) must fill each with at least ``MIN_BUCKET_IDS`` points, padded (its
    bucket size, ``padded``, is what the guest receives in bucket 0). An honest host asks from its set
    size and memory: ``W >= 2`` buckets leave each over 1,070 of its IDs even at 1 MB. Without this a
    host of a few IDs could make the guest run up to ``MAX_BUCKETS`` (65,536) padded runs."""
    for h, wish in wishes.items():
        if wish == nbuckets > mine and padded[h] < MIN_BUCKET_IDS:
            raise _refused(me, "psi/buckets/propose", h, f"asked for {wish:,} buckets, which its set fills with only "
                           f"{padded[h]:,} points each (padded, psi/b0/host_blinded): more buckets than its size "
                           f"needs (an honest count leaves at least {MIN_BUCKET_IDS:,} per bucket)")


def _prefix(b: int, nbuckets: int) -> str:
    return "psi/" if nbuckets == 1 else f"psi/b{b}/"


def _padded(spill: Spill, n: int, me: str) -> int:
    size = padded_size(n, spill.parts)
    largest = int(spill.counts.max()) if spill.parts else 0
    if largest > size:     # probability < 2^-40 under a fresh random key
        raise PsiError(f"{me}: a PSI bucket holds {largest} IDs, more than the padded size {size}; "
                       "this happens with probability below 2^-40: run PSI again (a new key is drawn)")
    return size


def _padded_shuffled(rec: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The bucket's points plus random padding to ``size``, shuffled; and the shuffle
    (``points[p]`` is record ``perm[p]``, a padding point if ``perm[p] >= len(rec)``)."""
    allp = np.concatenate([rec["point"], random_points(size - len(rec))])
    perm = random_permutation(size)
    return allp[perm], perm


def _own_records(rec: np.ndarray, idx: np.ndarray, me: str, sender: str, step: str, also: str = "") -> np.ndarray:
    """The records at ``idx``, positions in this party's padded bucket that ``sender`` sent at
    ``step``. Padding points are random, so no peer's set holds them: one among the common
    positions means ``sender`` (``also`` names who else may have) sent wrong positions."""
    if len(idx) and int(idx.max()) >= len(rec):
        raise PeerError(f"{me}: {step} from {sender!r}{also} names a padding point as common: padding matches "
                        "nothing, so these are not the common positions", peer=sender, step=step)
    return rec[idx]


def _ids_of(source: IdSource, found: np.ndarray, me: str) -> np.ndarray:
    """The sorted IDs of the common records, read again and checked against their points."""
    found = found[np.argsort(found["row"], kind="stable")]
    ids = source.pick(found["row"])
    step = 1 << 18                   # hash in slices: a transient list per ID, not per intersection
    for lo in range(0, len(ids), step):
        if not (hash_ids(ids[lo:lo + step]) == found["point"][lo:lo + step]).all():
            raise ProtocolError(f"{me}: {source.name} changed while PSI ran (IDs no longer match their hashes)")
    del found
    ids.sort()                       # in place: equal to np.sort, without a second array
    return ids


def _log_bucket(me: str, b: int, nbuckets: int, common: int, t: float) -> None:
    if nbuckets > 1:
        log.info("%s: bucket %d/%d: %d common IDs in %.1f s", me, b + 1, nbuckets, common,
                 time.perf_counter() - t)


def _count(value, step: str, sender: str, me: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_BUCKETS:
        raise _refused(me, step, sender, f"must give a bucket count in [1, {MAX_BUCKETS}], got {repr(value)[:40]}")
    return value


def _hex32(value, step: str, sender: str, me: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != NONCE_BYTES:
        raise _refused(me, step, sender, f"must carry {NONCE_BYTES}-byte hex values")
    return raw


def _refused(me: str, step: str, sender: str, what: str) -> PeerError:
    """``sender``'s message at ``step`` refused: ``"<me>: <step> from '<sender>' <what>"``."""
    return PeerError(f"{me}: {step} from {sender!r} {what}", peer=sender, step=step)
