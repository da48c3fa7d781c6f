"""`vfl serve` with hosts whose weights are encrypted under the arbiter's key (``host_weights = "encrypted"``).

The arbiter serves too: served scores must equal `vfl predict`'s for the same IDs; what the arbiter decrypts
must be masked (uniform mod n, never the packed sums); a host refuses an arbiter key other than the one its
weights are under; a plain job's arbiter is refused clearly; an ID a host lacks is an error naming it.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from crypto import EncryptedArray, PrivateKey, generate_keypair       # noqa: E402
from crypto.encoding import decode_signed                              # noqa: E402
from crypto.packing import SLOT_BITS, packed_count, slots_per_ciphertext, unpack   # noqa: E402
from tests.conftest import make_job                                   # noqa: E402
from tests.test_serving import Running, _free, start_services, wait_ready   # noqa: E402
from vfl.io.synth import vertical_split                               # noqa: E402
from vfl.job.config import ConfigError, load_job                      # noqa: E402
from vfl.job.threads import run_local, run_predict_local              # noqa: E402
from vfl.models.common import U_FRAC_BITS                             # noqa: E402
from vfl.models.key_holder import KEY_FILE, SERVE_SLOT_BITS, decrypt_served_sums   # noqa: E402
from vfl.protocol.channel import ProtocolError                        # noqa: E402
from vfl.serving.encrypted import ArbiterKeyDiffers, EncryptedHostScorer   # noqa: E402
from vfl.serving.roles import SERVE_ARBITER_REFUSAL                   # noqa: E402
from parties.certs import make_certs                                  # noqa: E402
from parties.party import with_tls_dir                                # noqa: E402

RUNNING: list = []        # the module's services, stopped after its last test (one test restarts the arbiter)
ENCRYPTED = {"type": "embedding", "host_weights": "encrypted", "epochs": 2, "batch_size": 256,
             "embedding_dim": 3, "hidden_units": [6], "min_category_rows": 16}


def _trained(tmp, model: dict, n_hosts: int = 2):
    guest, hosts = vertical_split(700, 3, [2] * n_hosts, overlap=0.9, seed=6)
    job = make_job(tmp, guest, hosts, model=model, guest_keys={"serve_address": f"127.0.0.1:{_free()}"},
                   serving={"max_batch": 200})
    cfg = load_job(job.to_toml(tmp / "job.toml"))
    return cfg, guest, hosts


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served_encrypted")
    cfg, guest, hosts = _trained(tmp, ENCRYPTED)
    run_local(cfg)
    run_predict_local(cfg)
    make_certs(cfg, tmp / "tls")
    cfg = with_tls_dir(cfg, tmp / "tls")
    scores = pd.read_csv(cfg.output_dir("guest") / "scores.csv", dtype={"id": str})
    RUNNING.extend(start_services(cfg))          # the arbiter's first
    url = "http://" + cfg.guest.serve_address
    wait_ready(url)
    yield cfg, scores, guest, hosts, url
    for r in RUNNING:
        r.stop()


def test_served_scores_equal_vfl_predict(served):
    cfg, scores, *_, url = served
    ids = scores["id"].tolist()
    assert len(ids) > 400
    got = []
    for at in range(0, len(ids), 200):                 # [serving] max_batch = 200
        res = httpx.post(url + "/score/batch", json={"ids": ids[at:at + 200]}, timeout=60).json()["results"]
        assert [r["id"] for r in res] == ids[at:at + 200]
        got += res
    np.testing.assert_allclose([r["probability"] for r in got], scores["score"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose([r["points"] for r in got], scores["points"].to_numpy(), atol=0.051)
    assert all("reasons" in r for r in got)
    for i in (0, 5, len(ids) - 1):                     # single requests too
        one = httpx.post(url + "/score", json={"id": ids[i]}, timeout=30).json()
        assert abs(one["probability"] - scores["score"].iloc[i]) <= 1e-12


def test_an_id_a_host_lacks_is_an_error_naming_it(served):
    cfg, scores, guest, hosts, url = served
    lacked = sorted((set(guest["id"]) & set(hosts[0]["id"])) - set(hosts[1]["id"]))[0]
    known = scores["id"].iloc[0]
    r = httpx.post(url + "/score", json={"id": lacked}, timeout=30)
    assert r.status_code == 404 and r.json()["party"] == "host1", r.text
    batch = httpx.post(url + "/score/batch", json={"ids": [lacked, known]}, timeout=30).json()["results"]
    assert batch[0]["status"] == 404 and batch[0]["party"] == "host1"
    assert abs(batch[1]["probability"] - scores["score"].iloc[0]) <= 1e-12


def test_the_arbiter_decrypts_only_masked_values(served, monkeypatch):
    """What the arbiter decrypts is the packed sum plus a fresh uniform mask mod n: never below the packed
    values' bound, different for the same request twice, and only the guest's masks turn it into the sums."""
    import parties.serve as serve
    import parties.serve_arbiter as serve_arbiter
    cfg, scores, *_, url = served
    seen, masks = [], []

    def decrypting(sk, enc, limit):
        plain = decrypt_served_sums(sk, enc, limit)
        seen.append(plain)
        return plain

    def summing(answers, kept):
        masked, r = real_sum(answers, kept)
        masks.append(r)
        return masked, r

    real_sum = serve.sum_for_arbiter
    monkeypatch.setattr(serve_arbiter, "decrypt_served_sums", decrypting)
    monkeypatch.setattr(serve, "sum_for_arbiter", summing)
    ids = scores["id"].tolist()[:40]
    first = httpx.post(url + "/score/batch", json={"ids": ids}, timeout=60).json()["results"]
    second = httpx.post(url + "/score/batch", json={"ids": ids}, timeout=60).json()["results"]
    assert [r["probability"] for r in first] == [r["probability"] for r in second]
    assert len(seen) == len(masks) == 2
    _, sk = _key(cfg)
    n = int(sk.public_key.n)
    k = slots_per_ciphertext(sk.public_key.bits, SERVE_SLOT_BITS)
    assert len(seen[0]) == packed_count(len(ids), sk.public_key.bits, SERVE_SLOT_BITS)
    bound = 1 << (SERVE_SLOT_BITS * k)                  # every packed plaintext is below this
    for plain, r in zip(seen, masks):
        packed = [(int(v) - int(m)) % n for v, m in zip(plain, r)]
        assert all(p < bound for p in packed)           # the true packed sums
        assert all(int(v) >= bound for v in plain)      # what the arbiter saw: not them (uniform mod n)
    assert seen[0] != seen[1]                           # fresh masks per request
    # the packed sums, unmasked with the guest's masks, are the hosts' sums behind the served scores
    packed = np.array([(int(v) - int(m)) % n for v, m in zip(seen[0], masks[0])], dtype=object)
    sums = np.asarray(decode_signed(unpack(packed, len(ids), n, SERVE_SLOT_BITS), U_FRAC_BITS), dtype=float)
    from vfl.serving.roles import GuestScorer
    g = GuestScorer.__new__(GuestScorer)
    g.job = cfg
    g._load(cfg.guest)
    own = g.part.score(g.lookup(ids).table)
    logit = own + g.part.host_weight * sums
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), [r["probability"] for r in first], rtol=0, atol=1e-12)
    # and the arbiter's audit log has a line per decryption, with no ID
    lines = [json.loads(x) for x in (cfg.output_dir("arbiter") / "serving" / "audit.jsonl").read_text().splitlines()
             if x.strip()]
    assert sum(1 for x in lines if x.get("step") == "serve/decrypt" and x.get("outcome") == "answered") >= 2
    assert all(not x.get("ids") for x in lines)


def test_one_hosts_ciphertexts_alone_decrypt_to_uniform_values(served, monkeypatch):
    """With two hosts each host's [[u_h]] carries pairwise masks mod n that cancel only in the sum over both:
    decrypted alone (a guest sending the arbiter one host's ciphertexts) a host's values are uniform mod n."""
    from vfl.serving.encrypted import EncryptedGuestScorer
    cfg, scores, *_, url = served
    got = {}
    real = EncryptedGuestScorer.read_answer

    def reading(self, payload, req, n, host, pk=None):
        answer = real(self, payload, req, n, host, pk)
        got[host] = answer.enc
        return answer

    monkeypatch.setattr(EncryptedGuestScorer, "read_answer", reading)
    ids = scores["id"].tolist()[:30]
    res = httpx.post(url + "/score/batch", json={"ids": ids}, timeout=60).json()["results"]
    assert all("probability" in r for r in res)
    _, sk = _key(cfg)
    n = int(sk.public_key.n)
    alone = {h: [int(v) for v in sk.decrypt_raw(e.ciphertexts).tolist()] for h, e in got.items()}
    assert sorted(alone) == ["host0", "host1"]
    small = 1 << 100                          # |u_h| * 2^40 is far below this; a uniform value mod n is not
    for h, values in alone.items():
        assert all(min(v, n - v) > small for v in values), h
    both = [(a + b) % n for a, b in zip(alone["host0"], alone["host1"])]
    assert all(min(v, n - v) < small for v in both)        # the masks cancel in the sum over both hosts


def _key(cfg):
    sk = PrivateKey.load(cfg.output_dir("arbiter") / KEY_FILE, mode=cfg.model.encryption)
    return sk.public_key, sk


def test_a_host_refuses_an_arbiter_key_other_than_its_weights(served):
    cfg, *_ = served
    scorer = EncryptedHostScorer(cfg, "host0")
    session, hello = scorer.hello()
    other, _ = generate_keypair(cfg.model.key_bits)
    payload = {"epoch": 1, "keys": [], "model_id": scorer.model_id, "arbiter_key": other.to_dict()}
    with pytest.raises(ArbiterKeyDiffers, match="link refused"):
        scorer.set_keys(session, payload)
    assert scorer.weights is None
    # the right key passes that check (this payload is refused later, for its empty key list)
    pk, _ = _key(cfg)
    with pytest.raises(ProtocolError) as exc:
        scorer.set_keys(session, {**payload, "arbiter_key": pk.to_dict()})
    assert not isinstance(exc.value, ArbiterKeyDiffers) and "expected 2 keys" in str(exc.value)
    assert scorer.weights is not None
    with pytest.raises(ProtocolError, match="arbiter_key"):          # no key at all
        scorer.set_keys(session, {k: v for k, v in payload.items() if k != "arbiter_key"})


def test_the_arbiter_bounds_what_it_decrypts(served):
    cfg, *_ = served
    pk, sk = _key(cfg)
    most = packed_count(cfg.serving.max_batch, pk.bits, SERVE_SLOT_BITS)
    ok = EncryptedArray.encrypt(pk, np.zeros(most))
    assert len(decrypt_served_sums(sk, ok, cfg.serving.max_batch)) == most
    with pytest.raises(ValueError, match="expected 1 to"):
        decrypt_served_sums(sk, EncryptedArray.encrypt(pk, np.zeros(most + 1)), cfg.serving.max_batch)
    with pytest.raises(ValueError, match="fractional bits"):
        decrypt_served_sums(sk, EncryptedArray.encrypt(pk, np.zeros(2), frac_bits=20), cfg.serving.max_batch)
    other, _ = generate_keypair(pk.bits)
    with pytest.raises(ValueError):
        decrypt_served_sums(sk, EncryptedArray.encrypt(other, np.zeros(2)), cfg.serving.max_batch)


def test_an_arbiter_down_is_named_and_re_linked(served):
    """Without the arbiter the guest answers 503 naming it and /ready lists it; restarted, it is re-linked (a new
    epoch: its key relayed to the hosts again) and scores equal vfl predict's again. /model shows its key."""
    from parties.serve_arbiter import run_arbiter_service
    cfg, scores, *_, url = served
    pk, _ = _key(cfg)
    assert httpx.get(url + "/model", timeout=10).json()["arbiter_key"] == pk.fingerprint().hex()
    epoch = wait_ready(url)["epoch"]
    RUNNING[0].stop()
    deadline = time.monotonic() + 20
    while httpx.get(url + "/ready", timeout=5).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.get(url + "/ready", timeout=5)
    assert r.status_code == 503 and r.json()["missing"] == ["arbiter"]
    one = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]}, timeout=30)
    assert one.status_code == 503 and one.json()["party"] == "arbiter"
    RUNNING[0] = Running(run_arbiter_service, cfg, "arbiter")
    assert wait_ready(url)["epoch"] > epoch
    one = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]}, timeout=30).json()
    assert abs(one["probability"] - scores["score"].iloc[0]) <= 1e-12


@pytest.mark.parametrize("slot_bits", [SLOT_BITS, SERVE_SLOT_BITS])
def test_short_packing_reads_as_crypto_packing(slot_bits):
    """The guest packs a request's sums with no padding slots in its last group; unpacked, they are the values
    crypto.packing.pack gives, for every length around the slots per ciphertext."""
    from crypto.packing import pack
    from vfl.models.encrypted_host import pack_short
    pk, sk = generate_keypair(512)
    k = slots_per_ciphertext(pk.bits, slot_bits)
    rng = np.random.default_rng(3)
    for n in (1, k - 1, k, k + 1, 2 * k + 1):
        values = rng.normal(size=n) * 4000
        enc = EncryptedArray.encrypt(pk, values)
        short, full = pack_short(enc, slot_bits), pack(enc, slot_bits)
        assert len(short) == len(full) == packed_count(n, pk.bits, slot_bits)
        got = unpack(sk.decrypt_raw(short.ciphertexts), n, pk.n, slot_bits)
        assert list(got) == list(unpack(sk.decrypt_raw(full.ciphertexts), n, pk.n, slot_bits))
        np.testing.assert_allclose(decode_signed(got, U_FRAC_BITS), values, rtol=0, atol=1e-9)


def test_a_plain_jobs_arbiter_is_refused(tmp_path):
    from parties.serve_http import serve
    cfg, *_ = _trained(tmp_path, {"type": "embedding", "host_weights": "plain", "epochs": 1})
    with pytest.raises(ConfigError) as exc:
        serve(cfg, "arbiter")
    assert str(exc.value) == SERVE_ARBITER_REFUSAL
    from parties.cli import main
    assert main(["serve", str(cfg.path), "--name", "arbiter"]) != 0
