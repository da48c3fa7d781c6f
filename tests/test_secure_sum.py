import threading

import numpy as np
import pytest

from crypto.secure_sum import FRAC_BITS, SumKey, reveal_sum
from vfl.channel import LocalNetwork
from vfl.scoring import guest_sum_scores, host_send_scores


def test_masks_cancel_and_shares_look_random():
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, 5, 1000) for _ in range(3)]
    keys = [SumKey() for _ in parts]
    pubs = [k.public_bytes() for k in keys]
    shares = [k.masked_share(v, i, pubs, b"job/predict") for i, (k, v) in enumerate(zip(keys, parts))]
    np.testing.assert_allclose(reveal_sum(shares), sum(parts), atol=3 * 2.0 ** -FRAC_BITS)
    plain = np.round(parts[0] * 2.0 ** FRAC_BITS).astype(np.int64).view(np.uint64)
    assert np.mean(shares[0] == plain) == 0
    # A share is spread over the whole 64-bit range, unlike the small fixed-point scores.
    assert np.mean(shares[0] > 2**63) == pytest.approx(0.5, abs=0.06)
    # A different context gives different masks (never reused across jobs or steps).
    other = keys[0].masked_share(parts[0], 0, pubs, b"job/other")
    assert not np.array_equal(other, shares[0])


def test_guest_learns_only_the_sum_over_the_channel():
    rng = np.random.default_rng(1)
    parts = {f"h{i}": rng.normal(size=50) for i in range(3)}
    net = LocalNetwork(["g", *parts], record=True, timeout=10)
    out = {}
    threads = [threading.Thread(target=lambda: out.update(s=guest_sum_scores(net.channel("g"), list(parts), 50)))]
    threads += [threading.Thread(target=host_send_scores, args=(net.channel(h), "g", i, 3, u, "t"))
                for i, (h, u) in enumerate(parts.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(out["s"], sum(parts.values()), atol=1e-8)
    for rec in net.transcript:
        if rec.receiver == "g" and rec.step == "predict/u_h_share":
            as_float = rec.payload.view(np.int64) / 2.0 ** FRAC_BITS
            assert not np.allclose(as_float, parts[rec.sender], atol=1e-3)


def test_out_of_range_scores_are_refused():
    k = SumKey()
    with pytest.raises(ValueError, match="finite"):
        k.masked_share(np.array([np.nan]), 0, [k.public_bytes()], b"c")
