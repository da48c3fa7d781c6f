"""A party joins its existing multi-node Ray cluster by ``ray_address = "HOST:PORT"``.

The module starts a real two-node cluster on this machine (a head and a
second node, separate raylets, one CPU each; ``ray.cluster_utils.Cluster``
runs the same node processes as ``ray start``), every node bound to
127.0.0.1 so nothing leaves loopback. The party's backend is chosen as a
party process chooses it (``crypto.backends.selected(ray_address)``), joins
by address, and must run shards on both nodes and give the local pool's
numbers. Skipped when Ray is not installed (CI installs it with ``.[test]``).
"""
from __future__ import annotations

import ipaddress
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from crypto import backends, generate_keypair  # noqa: E402
from crypto.backends.base import BackendUnavailable  # noqa: E402
from crypto.backends.ray import RayBackend  # noqa: E402
from crypto.psi import PsiKey, hash_ids  # noqa: E402
from tests.test_ray_backend import _heavy_ops  # noqa: E402

NODE = dict(node_ip_address="127.0.0.1", num_cpus=1, object_store_memory=80 * 2**20)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():                      # another module's runtime: this test needs its own driver
        ray.shutdown()
    c = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False))
    c.add_node(**NODE)
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _on_node(fn, args):
    """Shard function: ``fn(*args)`` and the Ray node that ran it."""
    return ray.get_runtime_context().get_node_id(), fn(*args)


class NodeRecorder:
    """The backend it wraps, recording the Ray node of every shard it runs."""

    name, remote = "ray", True

    def __init__(self, inner: RayBackend) -> None:
        self.inner, self.nodes = inner, []

    def workers(self) -> int:
        return self.inner.workers()

    def map(self, fn, arg_tuples):
        out = self.inner.map(_on_node, [(fn, args) for args in arg_tuples])
        self.nodes += [node for node, _ in out]
        return [result for _, result in out]

    def warm_up(self) -> None:
        self.inner.warm_up()

    def shutdown(self) -> None:
        self.inner.shutdown()


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


def _non_loopback_sockets() -> list:
    """Inet sockets of this process and its children (the cluster's and the actors' processes) that
    are bound to, listen on or talk to anything but loopback."""
    import psutil                                  # ships with Ray (ray/thirdparty_files)
    me = psutil.Process()
    bad = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:                       # exited meanwhile
            continue
        bad += [(proc.name(), c.laddr, c.raddr) for c in conns
                if not _loopback(c.laddr.ip) or (c.raddr and not _loopback(c.raddr.ip))]
    return bad


def test_a_party_joins_a_two_node_cluster_by_address(cluster, monkeypatch):
    monkeypatch.delenv("VFL_WORKERS", raising=False)       # one actor per cluster CPU: 2
    address = cluster.address
    assert address.startswith("127.0.0.1:")
    nodes = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
    assert len(nodes) == 2
    pk, sk = generate_keypair(512)
    rng = np.random.default_rng(5)
    x, X = rng.normal(size=600), rng.normal(size=(600, 4))      # >= 256 rows: sharded
    points = hash_ids(np.array([f"客户-{i}" for i in range(12_000)]))   # above the PSI pool threshold
    psi_key = PsiKey()

    assert not ray.is_initialized()
    with backends.selected(address) as backend:                  # what a party with this ray_address runs
        assert isinstance(backend, RayBackend) and backend.address == address
        assert ray.is_initialized() and backend.workers() == 2
        assert set(backend.worker_nodes()) == nodes              # SPREAD: one actor on each node
        recorder = NodeRecorder(backend)
        with backends.using(recorder):
            _, on_cluster = _heavy_ops(pk, sk, x, X)
            blinded = psi_key.blind(points)
        assert _non_loopback_sockets() == []
    assert not ray.is_initialized()                              # the backend left the cluster it joined
    assert cluster.head_node.remaining_processes_alive()         # ... and did not stop it

    # shards ran on both nodes, a fair share on each
    counts = {n: recorder.nodes.count(n) for n in nodes}
    assert set(recorder.nodes) == nodes and min(counts.values()) >= len(recorder.nodes) // 3, counts
    # the same numbers as the local pool, which follow the plaintext
    _, on_pool = _heavy_ops(pk, sk, x, X)
    for k in on_pool:
        np.testing.assert_array_equal(on_cluster[k], on_pool[k], err_msg=k)
    np.testing.assert_allclose(on_cluster["xt_d"], X.T @ x, atol=1e-6)
    np.testing.assert_array_equal(blinded, psi_key.blind(points))


def test_an_address_where_no_cluster_answers_fails_at_once():
    import socket
    if ray.is_initialized():                       # RayBackend would use that runtime and not join at all
        ray.shutdown()
    with socket.socket() as s:                     # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=rf"no Ray cluster answers at ray_address = '127.0.0.1:{port}'.*"
                                                 rf"ray start --head --port={port}"):
        RayBackend(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 10 and not ray.is_initialized()


def test_an_address_where_something_else_listens_fails_at_once():
    """Ray would retry a port where, say, a web server or another party's TLS listener answers
    for minutes; the party says at once that it is not a Ray head."""
    import socket
    import threading
    if ray.is_initialized():
        ray.shutdown()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_like_a_web_server() -> None:
        for _ in range(4):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=answer_like_a_web_server, daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable, match=rf"something listens at ray_address = '127.0.0.1:{port}' "
                                                     r"but it is not a Ray head"):
            RayBackend(f"127.0.0.1:{port}")
    finally:
        server.close()
    assert time.monotonic() - start < 10 and not ray.is_initialized()


def _square_after(seconds: float, x: int) -> int:
    time.sleep(seconds)
    return x * x


def test_a_node_lost_mid_call_has_its_shards_run_on_the_others(cluster, monkeypatch):
    """A node of the party's cluster dies while its actor runs shards. The call failed after ~5 s with
    ActorUnavailableError (Ray retried only on the actor's restart); now its shards run again on the
    actors of the live nodes, and the lost node's actor, whose restart has no free CPU to go to, is given
    up after the start timeout instead of holding later calls."""
    import threading
    monkeypatch.delenv("VFL_WORKERS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    extra = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    backend = RayBackend(cluster.address, workers=3, start_timeout=4)
    try:
        assert extra.node_id in backend.worker_nodes()              # SPREAD: one actor per node
        threading.Timer(1.0, cluster.remove_node, (extra,), {"allow_graceful": False}).start()
        start = time.monotonic()
        assert backend.map(_square_after, [(1.5, i) for i in range(6)]) == [i * i for i in range(6)]
        assert time.monotonic() - start < 20
        deadline = time.monotonic() + 15
        while backend.workers() == 3 and time.monotonic() < deadline:
            assert backend.map(_square_after, [(0.0, i) for i in range(3)]) == [0, 1, 4]
            time.sleep(0.5)
        assert backend.workers() == 2 and extra.node_id not in backend.worker_nodes()
        assert backend.map(_square_after, [(0.0, i) for i in range(5)]) == [i * i for i in range(5)]
    finally:
        backend.shutdown()
    assert not ray.is_initialized() and cluster.head_node.remaining_processes_alive()
