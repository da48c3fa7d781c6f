"""The protocol in one machine-readable table: every step any role sends.

Each :class:`StepSpec` says, for one step-name pattern and one sender and
receiver role, what travels (payload class and the allowed wire kinds) and
what the receiver learns from it. :class:`vfl.protocol.ledger.SpecChannel`
refuses to send anything not declared here (or a control payload over its
step's ceiling, :data:`CEILINGS`), and ``vfl audit`` checks the parties'
ledgers against it. ``docs/protocols.md`` describes the same steps
in prose; a test checks that its tables name every step of this spec.

A payload **class** is what the message is *to its receiver*, who may hold
keys that the wire does not show: ``masked_grad`` travels as a ciphertext, but
the arbiter holds the private key, so to it the masked sums are masked integers
(uniform mod n), and ``<pre>/e<e>/loss_plain`` travels as integers that are
uniform on the wire but to the guest, who knows the masks, the epoch's loss.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace

from crypto.signing import MAX_CERT_PEM

from .channel import PeerError

# payload classes: what the receiver gets, as it can read it
PUBLIC = "public"            # public parameters: keys anybody may know
CONTROL = "control"          # control words and counts (plans, parameter counts, stop flags)
CIPHERTEXTS = "ciphertexts"  # encrypted under a key the receiver does not hold
MASKED = "masked"            # masked integers: the receiver decrypts values hidden by a uniform mask mod n
BLINDED = "blinded"          # blinded curve points: pseudorandom without the blinding keys
POSITIONS = "positions"      # positions into a shuffled list of blinded points (PSI)
AGGREGATE = "aggregate"      # a plaintext aggregate over k rows
SHARE = "share"              # a secure-sum share: uniform alone, the sum over hosts when all are added
PARTITION = "partition"      # a split's side of every row, one bit per row (SecureBoost: the owner tells the guest)

CLASSES = {
    PUBLIC: "public parameters",
    CONTROL: "control",
    CIPHERTEXTS: "ciphertexts",
    MASKED: "masked integers",
    BLINDED: "blinded points",
    POSITIONS: "shuffled positions",
    AGGREGATE: "plaintext aggregate over k rows",
    SHARE: "secure-sum share",
    PARTITION: "split sides of every row",
}
# classes whose values the receiver reads in the clear (masked and share values are in the
# clear too, but uniformly distributed by themselves)
CLEAR = (PUBLIC, CONTROL, POSITIONS, MASKED, SHARE, AGGREGATE, PARTITION)

# payload kinds on the wire (vfl.protocol.messages)
KINDS = ("control", "array", "encrypted", "bigints")

# phases, and the phases each task runs
PSI, BIN, TRAIN, SCORE, SERVE = "psi", "bin", "train", "score", "serve"
TASK_PHASES = {"psi": (PSI,), "train": (PSI, BIN, TRAIN, SCORE), "predict": (PSI, SCORE),
               "serve": (SERVE,)}         # `vfl serve`: a service, checked message by message on its links

ROLES = ("guest", "host", "arbiter")


@dataclass(frozen=True)
class StepSpec:
    """One declared message: a step pattern from one role to another."""

    doc: str            # the step as docs/protocols.md names it, e.g. ``enc_u`` or ``psi/blind/<owner>``
    pattern: str        # regular expression for the full step name
    sender: str         # role: guest, host or arbiter
    receiver: str
    cls: str            # payload class (CLASSES)
    kinds: tuple        # allowed payload kinds (KINDS)
    learns: str         # what the receiver learns
    phase: str          # psi, train or score
    dtype: str | None = None   # for arrays: regex on the dtype without byte order, e.g. ``S32``, ``[iu][1248]``
    rows: str | None = None    # for aggregates: "n_train", "bins" (the
                               # smallest bin of the host's woe/bin_rows: every released bin has at least that),
                               # "noted" (a release: the receiver's own count, required on every non-empty one)
                               # or "unfloored" (UNFLOORED: no row minimum by design; the receiver's count follows)
    cap: tuple | None = None   # control payloads: the ceiling's terms ((coefficient, (size, ...)), ...), from
                               # CEILINGS; None where a payload is sized by a request (serving)

    def matches(self, step: str) -> re.Match | None:
        return _compiled(self.pattern).fullmatch(step)


_RE_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    if pattern not in _RE_CACHE:
        _RE_CACHE[pattern] = re.compile(pattern)
    return _RE_CACHE[pattern]


RELEASE = "noted"    # StepSpec.rows of a release: rows the receiver counted itself (SpecChannel.note_rows)
# StepSpec.rows of SecureBoost's per-node, per-bin host sums (enc_hist): no row minimum, by design
# (docs/protocols.md, 2a, "What each party learns in total"). The receiver counts the rows behind them only
# once it has decrypted them, so its ledger gives the fewest behind a non-empty sum in a line of its own,
# right after the message's: {"event": ROWS_EVENT, "peer", "step", "rows"}. `vfl audit` prints the smallest.
UNFLOORED = "unfloored"
ROWS_EVENT = "rows"

_PRE = r"(?P<pre>lr|emb)"
_BATCH = _PRE + r"/e(?P<epoch>\d+)/b(?P<batch>\d+)/"
_OWNER = r"(?P<owner>[^/]+)"
_POINTS, _POS, _U64 = "S32", "[iu][1248]", "u8"
_PSI_RUN = r"psi/(?:b(?P<bucket>\d+)/)?"     # the whole sets, or bucket <b> of bucketed PSI
_SBT_LEVEL = r"sbt/t(?P<tree>\d+)/l(?P<level>\d+)/"   # SecureBoost: tree <t>, level <d> (root: 0)
_BITS = "u1"


def _both(doc, pattern, sender, receivers, cls, kinds, learns, phase, **kw) -> list[StepSpec]:
    return [StepSpec(doc, pattern, sender, r, cls, kinds, learns, phase, **kw) for r in receivers]


_TABLE: list[StepSpec] = ([
    # ------------------------------------------------------------------ PSI (vfl/psi/)
    StepSpec("psi/plan", r"psi/plan", "guest", "host", CONTROL, ("control",),
             "the PSI protocol version and the host names and order (public in the job file)", PSI),
    # bucketed PSI (vfl/psi/bucketed.py): bucket count and key, then the steps below per bucket
    StepSpec("psi/buckets/propose", r"psi/buckets/propose", "host", "guest", CONTROL, ("control",),
             "the bucket count the host asks for (from its set size and memory budget) and a commitment "
             "to its nonce (hiding: the nonce is 256 random bits)", PSI),
    StepSpec("psi/buckets/open", r"psi/buckets/open", "guest", "host", CONTROL, ("control",),
             "the bucket count B (the largest asked for), the guest's nonce and every host's commitment", PSI),
    StepSpec("psi/buckets/reveal", r"psi/buckets/reveal", "host", "guest", CONTROL, ("control",),
             "the host's nonce, which must open its commitment", PSI),
    StepSpec("psi/buckets/nonces", r"psi/buckets/nonces", "guest", "host", CONTROL, ("control",),
             "every host's nonce (checked against the commitments): with the guest's, the bucket key", PSI),
    # one run of ECDH-PSI over whole sets (vfl/psi/roles.py) or over bucket <b> (psi/b<b>/...)
    StepSpec("psi/host_blinded", _PSI_RUN + r"host_blinded", "host", "guest", BLINDED, ("array",),
             "the size of the host's ID set (per bucket: the padded size, a function of the host's n and B); "
             "the points are on-curve u-coordinates, pseudorandom without the host's key (DDH; IDs hash to "
             "Curve25519 only, so no point carries a public curve/twist bit)", PSI, dtype=_POINTS),
    StepSpec("psi/blind/<owner>", _PSI_RUN + r"blind/" + _OWNER, "guest", "host", BLINDED, ("array",),
             "the size of the owner's ID set (per bucket: padded); nothing else: pseudorandom on-curve points "
             "(DDH), and no two sets it holds carry the same keys", PSI, dtype=_POINTS),
    StepSpec("psi/blinded/<owner>", _PSI_RUN + r"blinded/" + _OWNER, "host", "guest", BLINDED, ("array",),
             "nothing new by itself (pseudorandom on-curve points); after the last host, a fully blinded set "
             "in an order unknown to the guest", PSI, dtype=_POINTS),
    StepSpec("psi/unshuffle/<owner>", _PSI_RUN + r"unshuffle/" + _OWNER, "guest", "host", POSITIONS, ("array",),
             "m, the size of the intersection (per bucket: of the bucket's intersection)", PSI, dtype=_POS),
    StepSpec("psi/unshuffled/<owner>", _PSI_RUN + r"unshuffled/" + _OWNER, "host", "guest", POSITIONS, ("array",),
             "where the common points sit in what the guest sent that host (one hop back)", PSI, dtype=_POS),
    StepSpec("psi/result", _PSI_RUN + r"result", "guest", "host", POSITIONS, ("array",),
             "the intersection: the host maps the positions through its own shuffle to its IDs", PSI,
             dtype=_POS),
    # ------------------------------------------------------------------ binning, WOE/IV (vfl/preprocess/roles.py)
    StepSpec("woe/public_key", r"woe/public_key", "guest", "host", PUBLIC, ("control",),
             "the guest's Paillier public key n for this stage: nothing private", BIN),
    StepSpec("woe/enc_labels", r"woe/enc_labels", "guest", "host", CIPHERTEXTS, ("encrypted",),
             "nothing: [[y]], the training labels under the guest's key (the host knows the training rows)", BIN),
    StepSpec("woe/columns", r"woe/columns", "host", "guest", CONTROL, ("control",),
             "how many columns the host has, how many bins each, and how many of them are ordered value bins",
             BIN),
    StepSpec("woe/bin_rows", r"woe/bin_rows", "host", "guest", AGGREGATE, ("array",),
             "the training rows in each bin of each host column (anonymous columns), each at least min_bin_rows",
             BIN, dtype=r"[iu]8", rows="bins"),
    StepSpec("woe/enc_events", r"woe/enc_events", "host", "guest", AGGREGATE, ("encrypted",),
             "the events (label-1 rows) in each bin of each host column: a count over at least min_bin_rows "
             "rows (re-randomised sums under its own key)", BIN, rows="bins"),
    StepSpec("woe/keep", r"woe/keep", "guest", "host", CONTROL, ("control",),
             "which of its own columns the model keeps (IV selection)", BIN),
    StepSpec("woe/host_woe", r"woe/host_woe", "guest", "host", AGGREGATE, ("control",),
             "for each kept column, which adjacent bins were joined and each bin's WOE: its bins' event rates, "
             "each over at least min_bin_rows rows (with label-DP off, each joined bin also holds at least "
             "min_bin_events events and as many non-events)", BIN, rows="bins"),
    # ------------------------------------------------------------------ training setup (vfl/models/)
    *_both("<pre>/public_key", _PRE + r"/public_key", "arbiter", ("guest", "host"), PUBLIC, ("control",),
           "the arbiter's Paillier public key n: nothing private", TRAIN),
    StepSpec("<pre>/plan", _PRE + r"/plan", "guest", "arbiter", CONTROL, ("control",),
             "the number of aligned training rows, batches per epoch, the start epoch and the epoch of the "
             "guest's checkpoint, the guest's parameter count and who makes the encryption randomness (job "
             "setting)", TRAIN),
    StepSpec("<pre>/values", _PRE + r"/values", "host", "arbiter", CONTROL, ("control",),
             "the host's parameter count, its number of training rows (the guest's plan says it too) and who makes "
             "the encryption randomness (job setting)", TRAIN),
    StepSpec("<pre>/start", _PRE + r"/start", "guest", "host", CONTROL, ("control",),
             "the epoch training (re)starts at and the epoch of the guest's checkpoint", TRAIN),
    StepSpec("<pre>/model_id", _PRE + r"/model_id", "guest", "host", CONTROL, ("control",),
             "nothing: the training's model_id, 128 random bits the guest draws when a training starts (kept "
             "across --resume), which every party stores in its model part", TRAIN),
    # ------------------------------------------------------------------ per batch
    *_both("enc_zeros", _BATCH + r"enc_zeros", "arbiter", ("guest", "host"), CIPHERTEXTS, ("encrypted",),
           "nothing: fresh encryptions of zero under the arbiter's key, one per row of the batch, which it uses "
           "once each as the randomness of its own encryptions ([model] randomness = \"arbiter\")", TRAIN),
    StepSpec("enc_u", _BATCH + r"enc_u", "host", "guest", CIPHERTEXTS, ("encrypted",),
             "nothing: [[u_h]] under the arbiter's key", TRAIN),
    StepSpec("enc_d", _BATCH + r"enc_d", "guest", "host", CIPHERTEXTS, ("encrypted",),
             "nothing: the re-randomised residual [[d]] under the arbiter's key", TRAIN),
    StepSpec("enc_loss_part", _BATCH + r"enc_loss_part", "host", "guest", CIPHERTEXTS, ("encrypted",),
             "nothing: [[u_h . d]] under the arbiter's key", TRAIN),
    *(StepSpec("masked_grad", _BATCH + r"masked_grad", sender, "arbiter", MASKED, ("encrypted",),
               "uniform values mod n, independent of the sums; how many values the party releases", TRAIN)
      for sender in ("guest", "host")),
    StepSpec("masked_grad_plain", _BATCH + r"masked_grad_plain", "arbiter", "guest", AGGREGATE, ("bigints",),
             "its own released gradient sums, each over at least min_rows_per_release rows, with label-DP "
             "noise when on", TRAIN, rows=RELEASE),
    StepSpec("masked_grad_plain", _BATCH + r"masked_grad_plain", "arbiter", "host", AGGREGATE, ("bigints",),
             "its own released gradient sums, each over at least min_rows_per_release rows, with label-DP "
             "noise when on", TRAIN, rows=RELEASE),
    # host_weights = "encrypted" (vfl/models/encrypted_host.py): a host's weights back to their scale
    StepSpec("rescale", _BATCH + r"rescale", "host", "arbiter", MASKED, ("encrypted",),
             "nothing of the weights: the host's updated weights packed, each slot plus the host's mask uniform in "
             "[0, 2^(b + 80)), so every slot it decrypts is within 2^-79 of uniform whatever the weights; how many "
             "weights the host has (host_weights = \"encrypted\")", TRAIN),
    StepSpec("rescale_enc", _BATCH + r"rescale_enc", "arbiter", "host", CIPHERTEXTS, ("encrypted",),
             "nothing: fresh ciphertexts under the arbiter's key of its masked weights shifted to 40 fractional "
             "bits, which it unmasks homomorphically (host_weights = \"encrypted\")", TRAIN),
    StepSpec("enc_loss", _BATCH + r"enc_loss", "guest", "arbiter", MASKED, ("encrypted",),
             "nothing: the batch's approximated loss plus the guest's uniform mask mod n (one value, which the "
             "arbiter only adds to the epoch's others)", TRAIN),
    # ------------------------------------------------------------------ per epoch
    StepSpec("<pre>/e<e>/loss_plain", _PRE + r"/e(?P<epoch>\d+)/loss_plain", "arbiter", "guest", AGGREGATE,
             ("bigints",), "the epoch's training loss over all training rows (it removes the sum of its masks): "
             "not a batch's", TRAIN, rows="n_train"),
    StepSpec("<pre>/e<e>/converged", _PRE + r"/e(?P<epoch>\d+)/converged", "guest", "arbiter", CONTROL,
             ("control",), "whether the epoch's mean training loss moved by less than tolerance since the previous "
             "epoch: one bit of the loss (always false with label-DP)", TRAIN),
    StepSpec("<pre>/e<e>/decision", _PRE + r"/e(?P<epoch>\d+)/decision", "arbiter", "guest", CONTROL,
             ("control",), "whether to stop and whether training converged; with label-DP how many epoch runs "
             "the arbiter has noised (replays after a resume included)", TRAIN),
    StepSpec("<pre>/e<e>/decision", _PRE + r"/e(?P<epoch>\d+)/decision", "arbiter", "host", CONTROL,
             ("control",), "when training ends", TRAIN),
    StepSpec("<pre>/e<e>/saved", _PRE + r"/e(?P<epoch>\d+)/saved", "host", "guest", CONTROL,
             ("control",), "that the host has saved its checkpoint of this epoch, and the stop flag the arbiter "
             "sent it (which the guest has too)", TRAIN),
    # ------------------------------------------------------------------ SecureBoost (vfl/models/trees/)
    StepSpec("sbt/public_key", r"sbt/public_key", "guest", "host", PUBLIC, ("control",),
             "the guest's Paillier public key n for this model: nothing private", TRAIN),
    StepSpec("sbt/model_id", r"sbt/model_id", "guest", "host", CONTROL, ("control",),
             "nothing: the training's model_id, 128 random bits the guest draws for this training, which "
             "every party stores in its model part", TRAIN),
    StepSpec("sbt/plan", r"sbt/plan", "guest", "host", CONTROL, ("control",),
             "the number of training rows (known from PSI) and the job's trees, depth and bins, to check", TRAIN),
    StepSpec("sbt/columns", r"sbt/columns", "host", "guest", CONTROL, ("control",),
             "how many columns the host has, how many bins each, which have a missing-value bin and which are "
             "categorical (binned by value)", TRAIN),
    StepSpec("sbt/t<t>/l<d>/enc_gh", _SBT_LEVEL + r"enc_gh", "guest", "host", CIPHERTEXTS, ("encrypted",),
             "nothing: fresh ciphertexts for every training row at every level (the same number per row), "
             "under the guest's key; not which node a row is in", TRAIN),
    StepSpec("sbt/t<t>/l<d>/enc_hist", _SBT_LEVEL + r"enc_hist", "host", "guest", AGGREGATE, ("encrypted",),
             "for each node summed this level and each bin of each host column (anonymous): the sums of g and h "
             "and the number of the node's rows in the bin (what FATE's guest learns); knowing every row's g, h "
             "and node, in small nodes also which of the node's rows lie in each bin (those rows' bin codes). No "
             "row minimum, by design: a bin may hold a single row of the node (the guest's ledger notes the "
             "fewest)", TRAIN, rows=UNFLOORED),
    StepSpec("sbt/t<t>/l<d>/splits", _SBT_LEVEL + r"splits", "guest", "host", CONTROL, ("control",),
             "which of its own (column, bin or set of bins, missing side) splits the guest chose at this level, "
             "sorted, new "
             "ones only, without the node (a category's side, and the missing side, by the guest's secret coin "
             "when the node holds fewer than min_rows_per_release of its rows; a numeric cut only between runs "
             "of that many rows); and whether another level, another tree or nothing follows "
             "(early stopping: nothing, after a tree's first level of Enc(0))", TRAIN),
    StepSpec("sbt/t<t>/l<d>/split_bits", _SBT_LEVEL + r"split_bits", "host", "guest", PARTITION, ("array",),
             "for each new host split, the side of every training row (the guest keeps its node's rows; it "
             "would learn the same by scoring the training rows)", TRAIN, dtype=_BITS),
    StepSpec("sbt/keep", r"sbt/keep", "guest", "host", CONTROL, ("control",),
             "with early stopping, once after training: how many of its splits (the first ones, in the order "
             "it was told them) the kept trees use, hence, up to trees that added none of its splits, which "
             "tree was the best; it drops the rest", TRAIN),
    StepSpec("sbt/importance", r"sbt/importance", "guest", "host", AGGREGATE, ("control",),
             "once, after training: the number of split nodes of each of its own columns over the whole model "
             "(no gain, not per node or split)", TRAIN),
    StepSpec("sbt/predict/split_bits", r"sbt/predict/split_bits", "host", "guest", PARTITION, ("array",),
             "for each split the host holds, the side of every row scored; no threshold, no value", SCORE,
             dtype=_BITS),
    # ------------------------------------------------------------------ per epoch, with validation (validation.py)
    StepSpec("<pre>/e<e>/valid/sum_key", _PRE + r"/e\d+/valid/sum_key", "host", "guest", PUBLIC, ("control",),
             "nothing: a fresh X25519 public key for this epoch's validation sum, signed, and its certificate",
             TRAIN),
    StepSpec("<pre>/e<e>/valid/sum_keys", _PRE + r"/e\d+/valid/sum_keys", "guest", "host", PUBLIC, ("control",),
             "nothing: all hosts' signed X25519 public keys and certificates, in job order", TRAIN),
    StepSpec("<pre>/e<e>/valid/u_h_share", _PRE + r"/e\d+/valid/u_h_share", "host", "guest", SHARE, ("array",),
             "all shares together: the sum of the hosts' scores of each validation row with this epoch's "
             "parameters (a single host's score when there is one host)", TRAIN, dtype=_U64),
    *_both("<pre>/e<e>/valid_decision", _PRE + r"/e\d+/valid_decision", "guest", ("host", "arbiter"), CONTROL,
           ("control",), "whether this epoch is the best so far and whether to stop: a function of the "
           "validation labels, noised with label-DP (section 2, \"Validation and early stopping\")", TRAIN),
    # ------------------------------------------------------------------ scoring new rows (vfl/job/predict.py)
    StepSpec("predict/model_id", r"predict/model_id", "guest", "host", CONTROL, ("control",),
             "which training the guest's model part came from (its model_id, or null for a part saved "
             "before parts kept one): nothing else", SCORE),
    StepSpec("predict/model_id", r"predict/model_id", "host", "guest", CONTROL, ("control",),
             "which training the host's model part came from (its model_id, or null for a part saved "
             "before parts kept one): nothing else", SCORE),
    # ------------------------------------------------------------------ scoring (vfl/scoring.py)
    StepSpec("predict/sum_key", r"predict/sum_key", "host", "guest", PUBLIC, ("control",),
             "nothing: a fresh X25519 public key, signed with the host's TLS key, and its certificate", SCORE),
    StepSpec("predict/sum_keys", r"predict/sum_keys", "guest", "host", PUBLIC, ("control",),
             "nothing: all hosts' signed X25519 public keys and certificates, in job order", SCORE),
    StepSpec("predict/u_h_share", r"predict/u_h_share", "host", "guest", SHARE, ("array",),
             "alone: uniform mod 2^64 (with two or more hosts); all shares together: the sum of the hosts' "
             "scores per row (a single host's score when there is one host)", SCORE, dtype=_U64),
    # ------------------------------------------------------------------ scoring with encrypted host weights
    *_both("predict/public_key", r"predict/public_key", "arbiter", ("guest", "host"), PUBLIC, ("control",),
           "the arbiter's Paillier public key n, the one the hosts' saved weights are encrypted under: nothing "
           "private (vfl predict, host_weights = \"encrypted\")", SCORE),
    StepSpec("predict/enc_u", r"predict/enc_u", "host", "guest", CIPHERTEXTS, ("encrypted",),
             "nothing: [[u_h]] of every aligned row under the arbiter's key, re-randomised by the host "
             "(host_weights = \"encrypted\")", SCORE),
    StepSpec("predict/masked_sum", r"predict/masked_sum", "guest", "arbiter", MASKED, ("encrypted",),
             "uniform values mod n, independent of the scores; how many aligned rows (packed) "
             "(host_weights = \"encrypted\")", SCORE),
    StepSpec("predict/masked_sum_plain", r"predict/masked_sum_plain", "arbiter", "guest", SHARE, ("bigints",),
             "with its own masks removed: the sum of the hosts' scores of every aligned row, what the shares of "
             "predict/u_h_share give it otherwise (host_weights = \"encrypted\")", SCORE),
    # ------------------------------------------------------------------ online scoring (vfl/serving/roles.py)
    StepSpec("serve/hello", r"serve/hello", "host", "guest", PUBLIC, ("control",),
             "the SHA-256 of the host's model part and the model_id of the training it came from; a fresh X25519 "
             "key for this link, signed, and its certificate", SERVE),
    StepSpec("serve/keys", r"serve/keys", "guest", "host", PUBLIC, ("control",),
             "nothing: the epoch, all hosts' signed X25519 keys and certificates, in job order, and the model_id "
             "of the training the guest's part came from; with host_weights = \"encrypted\" the arbiter's public "
             "key (the host refuses one whose fingerprint is not its weights')", SERVE),
    StepSpec("serve/score", r"serve/score", "guest", "host", CONTROL, ("control",),
             "which IDs are being scored, and when (inherent to online scoring); every host gets the same IDs; "
             "under unknown_id = \"average\" with three or more hosts, for each ID the host lacks, whether at "
             "least two other hosts know it (the positions it may average)", SERVE),
    StepSpec("serve/share", r"serve/share", "host", "guest", SHARE, ("control",),
             "alone: uniform mod 2^64 (with two or more hosts); all shares together: the sum of the hosts' "
             "scores per requested ID (a single host's score when there is one host), uniform for an ID some "
             "host cannot score (it adds a fresh random value there) unless at least two hosts know it and "
             "the host may average it; masks bound to the request's ID list, so shares for different lists "
             "sum to uniform values; which IDs it cannot score", SERVE),
    StepSpec("serve/split_bits", r"serve/split_bits", "host", "guest", PARTITION, ("control",),
             "SecureBoost: for each split the host holds, the side of each requested ID (as sbt/predict/split_bits "
             "for a batch); which IDs it lacks; no threshold, no value", SERVE),
    # ------------------------------------------------------------------ online scoring, encrypted host weights
    StepSpec("serve/arbiter_hello", r"serve/arbiter_hello", "arbiter", "guest", PUBLIC, ("control",),
             "the arbiter's Paillier public key n, the one the hosts' weights are encrypted under (host_weights = "
             "\"encrypted\"); the guest relays it to every host in serve/keys", SERVE),
    StepSpec("serve/keys_ok", r"serve/keys_ok", "host", "guest", CONTROL, ("control",),
             "host_weights = \"encrypted\": that the host has taken the epoch's keys (the arbiter's checked, its "
             "encryption table built): nothing else; the guest counts the host ready only then", SERVE),
    StepSpec("serve/enc_share", r"serve/enc_share", "host", "guest", CONTROL, ("control",),
             "host_weights = \"encrypted\": which requested IDs the host cannot score (its serve/enc_u follows); "
             "or that it failed or refused the request", SERVE),
    StepSpec("serve/enc_u", r"serve/enc_u", "host", "guest", CIPHERTEXTS, ("encrypted",),
             "nothing: [[u_h]] of every requested ID under the arbiter's key, re-randomised by the host; an "
             "encryption of a uniform value mod n where it cannot score the ID", SERVE),
    StepSpec("serve/decrypt", r"serve/decrypt", "guest", "arbiter", CONTROL, ("control",),
             "a request number (its serve/masked_sum follows): when the guest scores", SERVE),
    StepSpec("serve/masked_sum", r"serve/masked_sum", "guest", "arbiter", MASKED, ("encrypted",),
             "uniform values mod n, independent of the scores; how many packed values (about the request's "
             "scorable IDs over the slots per ciphertext)", SERVE),
    StepSpec("serve/decrypted", r"serve/decrypted", "arbiter", "guest", CONTROL, ("control",),
             "the request number its serve/masked_sum_plain answers; or that the arbiter refused or failed it",
             SERVE),
    StepSpec("serve/masked_sum_plain", r"serve/masked_sum_plain", "arbiter", "guest", SHARE, ("bigints",),
             "with its own masks removed: the sum of the hosts' scores of every scorable requested ID, what "
             "serve/share gives it with plain host weights", SERVE),
])

# ------------------------------------------------------------------ ceilings on control payloads
# A control payload is JSON: its kind bounds nothing, so a party could carry every row's label or
# feature inside a declared step (``lr/start`` as a list, or as one long string or dict key). Each
# control step therefore has a ceiling on its encoded size, a sum of terms in public sizes (SIZES),
# about twice the largest honest payload and far below anything per row. It bounds the payload's
# bytes and its values (the ledger counts a number, boolean or null as one value and a string, dict
# keys included, by its length: never more than the bytes it takes). SpecChannel refuses a payload
# over it, on sending and on receipt, and ``vfl audit`` fails a ledger line over it.
SIZES = {
    "hosts": "the number of hosts of the job",
    "names": "the party names, as JSON strings with separators",
    "key": "hex digits of the job's Paillier modulus (key_bits / 4)",
    "cert": "one relayed secure-sum key's certificate and signature (checked by the receiving host under TLS)",
    "columns": "the columns the link's host declared in this run (woe/columns, sbt/columns)",
    "cells": "the bins of all those columns (the sum of the declared bins)",
    "nodes": "the most nodes of a tree level (2 ** max_depth)",
    "bins": "max_bin: the most bins a SecureBoost split names",
}
# a relayed certificate as large as the verifier accepts (its newlines JSON-escaped) and a hex signature
CERT_BYTES = MAX_CERT_PEM + MAX_CERT_PEM // 32 + 1024
DECLARES = ("woe/columns", "sbt/columns")     # steps in which a host declares its columns (``{"bins": [...]}``)
CEILINGS: dict[str, str] = {
    "psi/plan": "128 + names",
    "psi/buckets/propose": "160",
    "psi/buckets/open": "160 + 72*hosts",
    "psi/buckets/reveal": "128",
    "psi/buckets/nonces": "64 + 72*hosts",
    "woe/public_key": "96 + key",
    "woe/columns": "48 + 16*columns",
    "woe/keep": "32 + 8*columns",
    "woe/host_woe": "32 + 32*columns + 40*cells",
    "<pre>/public_key": "96 + key",
    "<pre>/plan": "256",
    "<pre>/values": "96",
    "<pre>/start": "96",
    "<pre>/model_id": "96",
    "<pre>/e<e>/converged": "48",
    "<pre>/e<e>/decision": "160",
    "<pre>/e<e>/saved": "32",
    "sbt/public_key": "96 + key",
    "sbt/model_id": "96",
    "sbt/plan": "160",
    "sbt/columns": "64 + 24*columns",
    "sbt/t<t>/l<d>/splits": "64 + 32*nodes + 6*nodes*bins",
    "sbt/keep": "32",
    "sbt/importance": "32 + 24*columns",
    "<pre>/e<e>/valid/sum_key": "128 + cert",
    "<pre>/e<e>/valid/sum_keys": "32 + 128*hosts + cert*hosts",
    "<pre>/e<e>/valid_decision": "64",
    "predict/model_id": "96",
    "predict/public_key": "96 + key",
    "predict/sum_key": "128 + cert",
    "predict/sum_keys": "32 + 128*hosts + cert*hosts",
}
REQUEST_SIZED = ("serve/hello", "serve/keys", "serve/score", "serve/share", "serve/split_bits",   # no ledger
                 "serve/arbiter_hello", "serve/keys_ok", "serve/enc_share", "serve/decrypt", "serve/decrypted")


def _terms(formula: str) -> tuple:
    """``"32 + 8*columns"`` as ((32, ()), (8, ("columns",))): every factor a number or a name in SIZES."""
    out = []
    for term in formula.split("+"):
        factors = [f.strip() for f in term.split("*")]
        names = tuple(f for f in factors if not f.isdigit())
        unknown = [n for n in names if n not in SIZES]
        if unknown:
            raise ValueError(f"ceiling {formula!r}: unknown size {unknown[0]!r}")
        out.append((math.prod(int(f) for f in factors if f.isdigit()), names))
    return tuple(out)


SPEC: tuple[StepSpec, ...] = tuple(replace(s, cap=_terms(CEILINGS[s.doc])) if s.doc in CEILINGS else s
                                   for s in _TABLE)


class SpecViolation(ValueError):
    """A message that the spec does not declare."""


# ------------------------------------------------------------------ a training's identity
# Every party stores its training's model_id in its model part (vfl/models/model_file.py): 128 random
# bits the guest draws when a training starts (<pre>/model_id, sbt/model_id), as 32 lowercase hex
# digits. `vfl predict` (predict/model_id) and `vfl serve` (serve/hello, serve/keys) compare them so
# parts of two trainings are never combined; null stands for a part saved before parts kept one.
MODEL_ID_HEX = 32
MODEL_ID_STEPS = ("<pre>/model_id", "sbt/model_id", "predict/model_id")


def is_model_id(value) -> bool:
    """Whether ``value`` is a model_id: 32 lowercase hex digits."""
    return isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{MODEL_ID_HEX}}}", value) is not None


def model_id_of(payload, step: str, unknown: bool = False, peer: str | None = None) -> str | None:
    """The model_id a message of :data:`MODEL_ID_STEPS` carries (``{"model_id": ...}``), checked:
    :class:`SpecViolation` for anything else, or, given the ``peer`` that sent it, a
    :class:`~vfl.protocol.channel.PeerError` naming it. With ``unknown``, null (a part without one) is None."""
    value = payload.get("model_id") if isinstance(payload, dict) and set(payload) == {"model_id"} else ...
    if value is None and unknown:
        return None
    if not is_model_id(value):
        reason = (f"expected {{\"model_id\": {MODEL_ID_HEX} lowercase hex digits{' or null' if unknown else ''}}}, "
                  f"not {str(payload)[:80]}")
        if peer is not None:
            raise PeerError(f"{step} from {peer}: {reason}", peer=peer, step=step, reason=reason)
        raise SpecViolation(f"{step}: {reason}")
    return value


def lookup(step: str, sender: str, receiver: str) -> list[StepSpec]:
    """Every spec entry for ``step`` between these roles (at most one in a consistent spec)."""
    return [s for s in SPEC if s.sender == sender and s.receiver == receiver and s.matches(step)]


def find(step: str, sender: str, receiver: str, kind: str | None = None, dtype: str | None = None,
         task: str | None = None, parties: dict | None = None) -> StepSpec:
    """The spec entry of this message, or :class:`SpecViolation` saying what is wrong.

    ``kind`` is the payload kind on the wire; ``dtype`` an array's dtype string (``<i8``);
    ``task`` the running task (``psi``, ``train``, ``predict``); ``parties`` maps party
    names to roles, to check an ``<owner>`` in a step name."""
    if sender not in ROLES or receiver not in ROLES:
        raise SpecViolation(f"{step!r}: unknown role {sender!r} or {receiver!r}")
    found = lookup(step, sender, receiver)
    if not found:
        others = sorted({f"{s.sender} -> {s.receiver}" for s in SPEC if s.matches(step)})
        where = f"; it is declared only {', '.join(others)}" if others else ""
        raise SpecViolation(f"step {step!r} is not declared from {sender} to {receiver}{where}")
    spec = found[0]
    if task is not None and spec.phase not in TASK_PHASES.get(task, ()):
        raise SpecViolation(f"step {step!r} belongs to {spec.phase}, which task {task!r} does not run")
    if parties is not None:
        owner = spec.matches(step).groupdict().get("owner")
        if owner is not None and owner not in parties:
            raise SpecViolation(f"step {step!r} names {owner!r}, which is no party of this job")
    if kind is not None and kind not in spec.kinds:
        raise SpecViolation(f"step {step!r} from {sender} to {receiver} carries {'/'.join(spec.kinds)}, "
                            f"not {kind}")
    if kind == "array" and spec.dtype is not None:
        if dtype is None or not re.fullmatch(spec.dtype, dtype.lstrip("<>|=")):
            raise SpecViolation(f"step {step!r} carries arrays of dtype {spec.dtype}, not {dtype}")
    return spec


def public_sizes(parties: dict[str, str], key_bits: int = 16384, max_depth: int = 16,
                 max_bin: int = 255) -> dict[str, int]:
    """The sizes control ceilings are written in, from what every party and the auditor know: the
    job's parties (name -> role) and settings (without a job, the largest the settings allow)."""
    return {"hosts": sum(role == "host" for role in parties.values()),
            "names": sum(len(json.dumps(name)) + 2 for name in parties),   # as JSON writes them, and ", "
            "key": -(-int(key_bits) // 4), "cert": CERT_BYTES, "nodes": 2 ** int(max_depth), "bins": int(max_bin)}


def declared_sizes(payload) -> dict[str, int] | None:
    """The columns and cells a host declares in a step of DECLARES (None for a malformed payload:
    the steps it sizes are then refused, and the role refuses the payload itself)."""
    bins = payload.get("bins") if isinstance(payload, dict) else None
    if not isinstance(bins, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0
                                             for b in bins):
        return None
    return {"columns": len(bins), "cells": sum(bins)}


def ceiling(spec: StepSpec, sizes: dict[str, int]) -> int | None:
    """The most bytes (and values) a control payload of ``spec`` may have, or None without a ceiling;
    KeyError names a size the run has not declared."""
    if spec.cap is None:
        return None
    return sum(c * math.prod(sizes[n] for n in names) for c, names in spec.cap)


def check_size(spec: StepSpec, step: str, values: int, nbytes: int, sizes: dict[str, int]) -> None:
    """:class:`SpecViolation` when a control payload exceeds its step's ceiling (or when the ceiling
    rests on columns the link's host has not declared in this run)."""
    try:
        limit = ceiling(spec, sizes)
    except KeyError as exc:
        raise SpecViolation(f"step {step!r} is sized by the host's {exc.args[0]}, which it has not declared in "
                            f"this run ({' or '.join(DECLARES)})") from None
    if limit is not None and (values > limit or nbytes > limit):
        raise SpecViolation(f"step {step!r} carries {values} values in {nbytes} bytes, over its ceiling of {limit} "
                            f"({CEILINGS[spec.doc]}, from public sizes): a control message carries a few "
                            "settings, never anything per row")


def batch_sizes(n_rows: int, batch_size: int) -> list[int]:
    """Rows of each batch of an epoch, as :func:`vfl.preprocess.split.batch_schedule` cuts them (sizes only,
    which do not depend on the seeded permutation)."""
    bounds = list(range(0, n_rows, batch_size)) + [n_rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < batch_size // 2:
        bounds.pop(-2)
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def batch_count(n_rows: int, batch_size: int) -> int:
    """``len(batch_sizes(n_rows, batch_size))`` without building the list: a peer's row count is checked
    against it before anything proportional to that count is made."""
    count = -(-n_rows // batch_size) if n_rows > 0 else 0
    if count > 1 and n_rows - (count - 1) * batch_size < batch_size // 2:
        count -= 1
    return count


def markdown_table() -> str:
    """The spec as a Markdown table (for docs/protocols.md or ``python -m vfl.protocol.spec``)."""
    lines = ["| step | sender → receiver | class | payload | receiver learns |", "|---|---|---|---|---|"]
    for s in SPEC:
        payload = "/".join(s.kinds) + (f" `{s.dtype}`" if s.dtype else "")
        lines.append(f"| `{s.doc}` | {s.sender} → {s.receiver} | {CLASSES[s.cls]} | {payload} | {s.learns} |")
    return "\n".join(lines)


if __name__ == "__main__":    # pragma: no cover
    print(markdown_table())
