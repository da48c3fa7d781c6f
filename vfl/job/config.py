"""The job file: the single source of truth shared by every party.

Each party reads the whole file but uses only the shared parts (addresses,
model settings, seeds) and its own table. Relative paths are resolved against
the job file's folder, so one job file works from any current directory.
Unknown keys are errors (a typo such as ``epoch = 5`` must not silently train
with the default).
"""
from __future__ import annotations

import difflib
import math
import numbers
import sys
import unicodedata
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..io.sql import resolve_url
from ..io.tables import ENCODINGS, canonical_encoding
from ..psi.bucketed import DEFAULT_MEMORY_MB

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROLES = ("guest", "host", "arbiter")
MIN_KEY_BITS = 2048      # shorter Paillier keys only with [model] allow_short_keys = true
MAX_KEY_BITS = 8192      # key generation takes ~10x longer per doubling: seconds at 8192, a minute at 16384
# the largest tower (defaults and benchmarks: embedding_dim 8, hidden_units [32]): every weight's gradient
# is an encrypted sum over each batch's rows
MAX_EMBEDDING_DIM = 512
MAX_HIDDEN_UNITS = 4096  # per layer
# [model] settings far out of any sensible range (the largest used here: learning_rate 2, l2 1, clip_norm 1;
# dp_epsilon from 1): beyond them values overflow the fixed-point encoding of the ciphertexts mid-training
MAX_LEARNING_RATE = 1e3
MAX_L2 = 1e6
MAX_CLIP_NORM = 1e6
MIN_DP_EPSILON = 1e-3


class ConfigError(ValueError):
    """The job file is missing something or says something impossible."""


@dataclass(frozen=True)
class PartyConfig:
    role: str
    name: str
    address: str
    data: Path | None = None
    id_column: str = "id"
    label_column: str | None = None
    cert: Path | None = None
    key: Path | None = None
    predict_data: Path | None = None     # rows to score with a trained model (`vfl predict`)
    categorical_columns: tuple[str, ...] = ()
    crosses: tuple[tuple[str, ...], ...] = ()   # within-party crosses of categorical columns (the wide part)
    ray_address: str | None = None       # where this party's heavy loops run: None = local process pool,
                                         # "local" = a private Ray runtime here, "HOST:PORT" = its Ray cluster
    encoding: str = "utf-8"              # of its CSV data and predict_data: "utf-8", "gbk" or "gb18030"
    psi_memory_mb: int = DEFAULT_MEMORY_MB   # PSI memory for one bucket's points: less means more buckets
    # online scoring (`vfl serve`, docs/protocols.md section 3a)
    serve_address: str | None = None     # guest: its HTTP API; host, and the arbiter of encrypted hosts: where the
                                         # guest's serving link dials (default: the party's address)
    store: str | None = None             # where `vfl serve` looks up features by ID: an SQLAlchemy URL
                                         # (e.g. "sqlite:///features.db"); default: predict_data, else data
    store_table: str | None = None       # the SQL table (default: the party's name)
    serve_cert: Path | None = None       # guest: HTTPS for its API with this certificate (PEM) ...
    serve_key: Path | None = None        # ... and key, e.g. from the bank's own PKI (absent: plain HTTP)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


DP_COEF_BITS = 12                 # backpropagated coefficients' fractional bits by default under label-DP
GUEST_SHARE_WITH_TABLES = 0.5     # the default dp_guest_share when the guest embeds categorical columns
BINNING_SHARE = 0.2               # the default dp_binning_share of a job with [preprocess]
ENCRYPTED_HOST_EPOCHS = 16        # host_weights = "encrypted": fixed epochs (no early stopping), as measured


@dataclass(frozen=True)
class ModelConfig:
    type: str = "logistic"
    # 0 = the model family's default, chosen for its protection (docs/protocols.md, "DP-aware defaults"):
    epochs: int = 0                          # logistic 10; embedding 12, under label-DP by epsilon: 12 up to 4,
                                             # 16 up to 16, 20 above (early stopping may end it sooner)
    batch_size: int = 0                      # a power of two near a sixth of the training rows (few, large,
                                             # less noisy steps): logistic 512 to 4096, embedding 512 to 8192
    learning_rate: float = 0.0               # logistic 0.05; embedding 0.03; secureboost 0.3 (shrinkage)
    optimizer: str = "adam"
    l2: float = 0.0
    tolerance: float = 1e-4
    key_bits: int = 2048
    allow_short_keys: bool = False           # keys below 2048 bits: for tests and benchmarks only
    seed: int = 7
    encryption: str = "djn"
    randomness: str = "arbiter"              # who makes the encryption randomness Enc(0): the arbiter (with the
                                             # factorisation, one batch ahead) or "local": each party its own
    precompute_randomness: bool = True      # with randomness = "local": the next batch's while waiting for peers
    approximation: str = "guest_expansion"   # or "taylor" (Hardy et al., as FATE)
    # the embedding model (type = "embedding")
    embedding_dim: int = 8
    hidden_units: tuple = (32,)
    # validation and early stopping (docs/protocols.md, "Validation and early stopping")
    early_stopping: str = "auto"             # "auto": on for the embedding model with plain hosts, off for
                                             # logistic and with encrypted hosts; "on"; "off"
    validation_fraction: float = 0.1         # of the training rows, held out to pick the best epoch
    patience: int = 3                        # epochs without a better validation score before stopping
    min_epochs: int = 0                      # decisions start after this many epochs (0: half of epochs)
    wide: bool = True                        # a weight per category, cross and numeric column, straight to the output
    host_weights: str = "auto"               # "encrypted": every host's tower is a wide table whose weights stay
                                             # encrypted under the arbiter's key (docs/protocols.md, section 2,
                                             # "Hosts with encrypted weights"); "plain": hosts train on released
                                             # sums (label-DP); "auto": encrypted for the embedding model unless
                                             # label_dp or early_stopping is "on"
    host_l2: float = 3.0                     # host_weights = "encrypted": the hosts' L2 penalty 0.5 * host_l2 *
                                             # |w|^2 on the summed training loss (scikit-learn's 1 / C)
    host_min_rows: int = 16                  # host_weights = "encrypted": training rows a value, cross or bin needs
                                             # for a host weight (a host releases nothing, so no release floor
                                             # applies: at min_category_rows' 32 the 60k set's arithmetic gave
                                             # 0.7871, at 16 0.7932)
    guest_refit: str = "auto"                # "auto"/"on": after training the guest refits its own part on exact
                                             # labels with the hosts' scores fixed (embedding model); "off"
    refit_min_rows: int = 2                  # the refit's one-hot keeps values with this many training rows
    hash_buckets: int = 0                    # > 0: hash categorical values into this many rows
    min_category_rows: int = 32              # rarer values share the "unknown" embedding row
    # protection of what decrypted gradient sums reveal (docs/protocols.md)
    min_rows_per_release: int = 32           # a sum is decrypted only once this many rows stand behind it
    table_release: str = "epoch"             # table sums (per category): "epoch" = at the epoch's end or a batch's
                                             # worth of rows; "eager" = as soon as min_rows_per_release rows
    label_dp: str = "auto"                   # "auto": on for the embedding model with plain hosts and for
                                             # logistic regression, but on WOE columns ([preprocess] woe = true:
                                             # a scorecard); off with encrypted hosts (nothing to noise);
                                             # "on"; "off"
    dp_epsilon: float = 8.0                  # for the whole training (all epochs); see docs/protocols.md
    dp_delta: float = 1e-5
    dp_guest_share: float = 0.1              # of the label-DP budget spent on the guest's releases (hosts: the
                                             # rest); a job whose guest has categorical columns defaults to 0.5
    dp_binning_share: float = 0.0            # of the label-DP budget spent on [preprocess]'s noised per-bin
                                             # event counts, before training (0.2 when the job has [preprocess])
    clip_norm: float = 1.0
    coef_bits: int = 0                       # fractional bits of backpropagated coefficients (of 24; fewer is
                                             # cheaper): 0 = auto, 12 with label-DP on, else all 24
    # gradient-boosted trees (type = "secureboost"; learning_rate and l2 above apply too)
    num_trees: int = 10
    max_depth: int = 4
    max_bin: int = 32
    min_child_weight: float = 1e-3
    min_leaf_rows: int = 20
    subsample: float = 1.0                   # rows drawn per tree from [model] seed (every party alike)
    colsample: float = 1.0                   # columns (all parties' pooled) each tree may split on, from seed
    host_root_splits: bool = False           # let a tree's root split on a host's column (that host then
                                             # knows both children's rows); off: roots split on the guest's

    def __post_init__(self) -> None:
        embedding = self.type == "embedding"
        if self.epochs == 0:
            object.__setattr__(self, "epochs", (ENCRYPTED_HOST_EPOCHS if self.encrypted_hosts else
                                                dp_epochs(self.dp_epsilon) if self.label_dp_on else 12)
                               if embedding else 10)
        if self.learning_rate == 0.0:
            object.__setattr__(self, "learning_rate",
                               0.03 if embedding else 0.3 if self.type == "secureboost" else 0.05)

    def resolved(self, n_train: int) -> "ModelConfig":
        """These settings with the batch size for ``n_train`` training rows filled in."""
        return replace(self, batch_size=self.batch_for(n_train))

    def at_epsilon(self, epsilon: float) -> "ModelConfig":
        """These settings with label-DP on at ``epsilon`` (the frontier's rows). Epochs at the
        embedding model's default for this job (:func:`dp_epochs` of its epsilon, or 12 without
        label-DP) follow the new epsilon; other epochs, set by hand, stay."""
        default = (ENCRYPTED_HOST_EPOCHS if self.encrypted_hosts else
                   dp_epochs(self.dp_epsilon) if self.label_dp_on else 12)
        auto = self.type == "embedding" and self.epochs == default
        return replace(self, label_dp="on", dp_epsilon=float(epsilon),
                       epochs=dp_epochs(epsilon) if auto else self.epochs,
                       host_weights="plain" if self.host_weights == "auto" else self.host_weights)

    @property
    def backprop_bits(self) -> int | None:
        """Fractional bits of the backpropagated coefficients (None: full precision).

        With label-DP on, 12 by default: the arbiter's noise (``z C``: 2.9 for a host at the defaults) dwarfs
        what cutting the coefficients toward zero moves a sum, and it never raises a row's norm
        above the clip bound; it makes the homomorphic backpropagation about 1.6x cheaper."""
        bits = self.coef_bits or (DP_COEF_BITS if self.label_dp_on else 0)
        return bits if 0 < bits < 24 else None

    def batch_for(self, n_train: int) -> int:
        """The batch size for ``n_train`` training rows: ``batch_size``, or the family's default."""
        if self.batch_size:
            return self.batch_size
        # a power of two near a sixth of the rows: few, large, less noisy steps, but six of them an epoch
        # (logistic regression at 4096 took one or two on a few thousand rows and ended under-trained:
        # the credit demo's data, label-DP on, test AUC 0.7721 and mean PD 0.389 against a bad rate of
        # 0.215; at 1024, 0.7859 and 0.230)
        top = 8192 if self.type == "embedding" else 4096
        return int(min(top, max(512, 2 ** math.ceil(math.log2(max(n_train, 1) / 6)))))

    @property
    def early_stopping_start(self) -> int:
        """The first epoch (0-based) whose validation score may decide: earlier ones are too noisy to."""
        return self.min_epochs or self.epochs // 2

    @property
    def early_stopping_on(self) -> bool:
        """Whether a validation slice picks the best epoch and stops training."""
        return self.early_stopping == "on" or (self.early_stopping == "auto" and self.type == "embedding"
                                               and not self.encrypted_hosts)

    @property
    def guest_refit_on(self) -> bool:
        """Whether the guest refits its own part after training (docs/protocols.md, "The guest's refit")."""
        return self.type == "embedding" and self.guest_refit != "off"

    @property
    def label_dp_on(self) -> bool:
        """Whether the arbiter adds Gaussian noise to every party's released sums (the guest's too)."""
        return self.label_dp == "on" or (self.label_dp == "auto" and self.type == "embedding"
                                         and not self.encrypted_hosts)

    @property
    def encrypted_hosts(self) -> bool:
        """Whether every host's weights stay encrypted under the arbiter's key (``host_weights = "encrypted"``):
        no host ever gets a value decrypted, so label-DP noise and early stopping are off."""
        return self.host_weights == "encrypted" or (self.host_weights == "auto" and self.type == "embedding"
                                                    and self.label_dp != "on" and self.early_stopping != "on")


ENCRYPTED_HOST_SETTINGS = ("host_weights", "host_l2", "host_min_rows")


def model_settings(m: ModelConfig) -> dict:
    """``asdict(m)`` as fingerprints hash it: without the ``host_weights = "encrypted"`` settings when they
    are at their defaults, so every job's fingerprints (checkpoints, the parties' job digest) stay what they
    were before the option existed."""
    d = asdict(m)
    if not m.encrypted_hosts and all(getattr(m, k) == getattr(ModelConfig, k) for k in ENCRYPTED_HOST_SETTINGS[1:]):
        for key in ENCRYPTED_HOST_SETTINGS:
            del d[key]
    return d


MAX_NAME_BYTES = 200
MAX_PARTY_NAME_CHARS = 64          # X.509 ub-common-name: a party's name is its certificate's CN
RESERVED_NAMES = frozenset({"ca", "tls", "cohorts", "job.toml", "metrics.json", "predict_metrics.json", "report.html"})
"""Party names that would collide with the CA's files (``ca.pem``) or the workdir's own entries."""
"""Job and party names, in UTF-8: every frame carries them (the transport allows 255 bytes, and a
link's session name adds ``/<task>`` to the job's)."""


def binned(job: "JobConfig") -> bool:
    """Whether the job trains on WOE-binned columns (missing values allowed: they get a bin)."""
    return job.preprocess is not None and job.preprocess.woe


def dp_epochs(epsilon: float) -> int:
    """The embedding model's default number of epochs under label-DP at ``epsilon``.

    More epochs are more steps but each gets a smaller share of the budget, so
    noisier releases: measured on the 60k e-commerce set (plaintext twin, median
    of 3-5 noise draws), 12 epochs were best up to epsilon 4, 16 at 8 (+0.003 AUC
    over 12), 16-20 at 16 and 20 at 32 (README, "Epochs by ε").
    """
    return 12 if epsilon <= 4 else 16 if epsilon <= 16 else 20


@dataclass(frozen=True)
class ScorecardConfig:
    """Points scaling: ``base_points`` at good:bad odds ``base_odds``; ``pdo`` points double the odds.
    (``base_score`` in the job file is the same as ``base_points``.)"""

    base_points: float = 600.0
    base_odds: float = 50.0
    pdo: float = 20.0

    @property
    def base_score(self) -> float:
        return self.base_points

    def problem(self) -> str | None:
        """What is wrong with this scaling, or None. The bounds keep every point finite and
        printable (a ``pdo`` of 1e308 made points ``inf``) and are far beyond any real scorecard."""
        if not 1e-9 <= self.base_odds <= 1e9:
            return f"base_odds must be between 1e-9 and 1e9, got {self.base_odds}"
        if not 0 < self.pdo <= 1e4:
            return f"pdo must be > 0 and at most 10000, got {self.pdo}"
        if not abs(self.base_points) <= 1e7:
            return f"base_points must be between -1e7 and 1e7, got {self.base_points}"
        return None


BINNING_METHODS = ("quantile", "equal_width")


@dataclass(frozen=True)
class PreprocessConfig:
    """``[preprocess]``: federated binning, WOE/IV, IV selection (docs/protocols.md, section 1a)."""

    binning: str = "quantile"          # or "equal_width"
    bins: int = 10                     # initial bins per numeric column (before merging)
    min_bin_rows: int = 50             # no bin with fewer training rows is ever counted or released
    min_bin_events: int = 5            # label_dp off: each host bin whose WOE the host gets holds this many
                                       # events and non-events (adjacent bins joined until it does)
    monotonic: bool = False            # join adjacent bins until WOE is monotonic
    woe: bool = True                   # train on WOE-transformed columns (a scorecard); False: selection only
    iv_threshold: float = 0.0          # drop columns with a lower information value
    iv_top_k_guest: int = 0            # keep at most this many guest columns (0: no limit)
    iv_top_k_host: int = 0             # each host keeps at most this many of its columns (0: no limit)


@dataclass(frozen=True)
class NetworkConfig:
    connect_timeout: float = 60.0
    peer_timeout: float = 300.0
    min_send_rate: float = float(1 << 20)  # bytes/s a peer must accept: a message of s bytes gets
                                          # peer_timeout + s / min_send_rate seconds to go out


@dataclass(frozen=True)
class ServingConfig:
    """``[serving]``: how `vfl serve` answers (docs/protocols.md section 3a)."""

    timeout: float = 2.0          # seconds the guest waits for each host per request, then 504 naming it
    unknown_id: str = "refuse"    # an ID a host does not know: "refuse" the row, or "average" = that host
                                  # contributes its average partial score and the answer says so (only
                                  # where two hosts know the ID, or with one host: docs section 3a)
    max_batch: int = 10_000       # IDs in one /score/batch request
    reasons: int = 4              # reason codes per answer (the guest's own columns, plus partner data)
    api_keys: str = ""            # a file of "client:secret" lines (relative to the job file): then /score,
                                  # /score/batch and /model need "Authorization: Bearer <secret>"
    ids_per_minute: int = 0       # > 0: each client (API key, else address) may have at most this many
                                  # IDs scored per minute; more get 429 (each host answers who holds an ID)
    quota_store: str = ""         # an SQLAlchemy URL the service's replicas share the quota in ("": each
                                  # process counts its own)
    read_timeout: float = 10.0    # seconds the guest's API gives a client to send a request's whole body once
                                  # its headers are in; 408 past it (a stalled body held a connection forever)
    max_connections: int = 512    # open HTTP connections (or requests in flight) past which the guest's API
                                  # answers 503 at once (uvicorn's limit_concurrency); keep below `ulimit -n`


@dataclass(frozen=True)
class JobConfig:
    path: Path
    name: str
    workdir: Path
    seed: int
    test_fraction: float
    baselines: bool
    arbiter: PartyConfig
    guest: PartyConfig
    hosts: tuple[PartyConfig, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    scorecard: ScorecardConfig = field(default_factory=ScorecardConfig)
    ca: Path | None = None
    preprocess: PreprocessConfig | None = None      # None: no [preprocess] table, no binning stage
    serving: ServingConfig = field(default_factory=ServingConfig)

    @property
    def parties(self) -> tuple[PartyConfig, ...]:
        return (self.guest, *self.hosts, self.arbiter)

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def party(self, name: str) -> PartyConfig:
        for p in self.parties:
            if p.name == name:
                return p
        raise ConfigError(f"no party named {name!r} in {self.path} (parties: "
                          f"{', '.join(p.name for p in self.parties)})")

    def output_dir(self, name: str) -> Path:
        """Where party ``name`` writes its files: ``<workdir>/<name>/``."""
        return self.workdir / name


GRADIENT_TYPES = ("logistic", "embedding")
FAMILY_SETTINGS: dict[str, tuple[str, ...]] = {
    # trained by gradient steps with an arbiter (logistic regression and the embedding model)
    **dict.fromkeys(("epochs", "batch_size", "optimizer", "tolerance", "randomness", "precompute_randomness",
                     "approximation", "coef_bits", "min_epochs", "table_release", "hash_buckets",
                     "min_category_rows", "dp_epsilon", "dp_delta", "dp_guest_share", "dp_binning_share",
                     "clip_norm"), GRADIENT_TYPES),
    # the embedding model's towers and the guest's refit
    **dict.fromkeys(("embedding_dim", "hidden_units", "wide", "refit_min_rows", "host_weights", "host_l2",
                     "host_min_rows"),
                    ("embedding",)),
    # gradient-boosted trees
    **dict.fromkeys(("num_trees", "max_depth", "max_bin", "min_child_weight", "min_leaf_rows", "subsample",
                     "colsample", "host_root_splits"), ("secureboost",)),
}
"""The ``[model]`` settings only some model types read: another type refuses them (at other than their
default), so ``epochs = 50`` with ``type = "secureboost"`` is an error, not 10 trees."""


def uses(model_type: str, key: str) -> bool:
    """Whether ``[model] type = model_type`` reads the setting ``key``."""
    return model_type in FAMILY_SETTINGS.get(key, (model_type,))


def _check_family(m: ModelConfig, given: set[str]) -> None:
    """Refuse settings given in ``[model]`` (``given``) that ``m.type`` does not use, unless at its default."""
    default = ModelConfig(type=m.type)
    notes = {k: f"{' and '.join(FAMILY_SETTINGS[k])} only" for k in sorted(given)
             if not uses(m.type, k) and getattr(m, k) != getattr(default, k)}
    if m.type == "secureboost" and "epochs" in notes:
        notes["epochs"] += "; the number of trees is num_trees"
    if m.type == "secureboost" and "label_dp" in given and m.label_dp == "on":
        notes["label_dp = 'on'"] = "trees add no label-DP noise"     # "on" must not promise it
    if notes:
        raise ConfigError(f"[model] type = {m.type!r} does not use "
                          f"{', '.join(f'{k} ({v})' for k, v in notes.items())}: remove "
                          f"{'it' if len(notes) == 1 else 'them'}")


def _check_address(address: Any, key: str, where: str) -> None:
    """``HOST:PORT`` with a port in 1..65535."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ConfigError(f"[{where}] {key} {address!r} must look like HOST:PORT")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"[{where}] {key} {address!r}: port {int(port)} is out of range (1 to 65535)")


def _check_name_characters(name: str, where: str) -> None:
    """Refuse a party name with a control character (a newline, a tab, NUL ...) or a line separator: the
    name is a folder, a certificate's common name and part of every log line and message."""
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ConfigError(f"[{where}] name {name!r} holds the control or line-break character U+{ord(bad):04X}: "
                          "a party's name names its folder and certificate and appears in every log line; use "
                          "printable characters")


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f" (allowed: {', '.join(sorted(allowed))})"
            raise ConfigError(f"unknown key {key!r} in [{where}]{extra}")


def _require(table: dict, key: str, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"missing key {key!r} in [{where}]")
    return table[key]


def _path(base: Path, value: Any) -> Path | None:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def _party(table: dict, role: str, where: str, base: Path) -> PartyConfig:
    allowed = {"name", "address", "data", "id_column", "cert", "key", "predict_data", "categorical_columns",
               "crosses", "ray_address", "encoding", "psi_memory_mb", "serve_address", "store", "store_table",
               "serve_cert", "serve_key"}
    if role == "guest":
        allowed.add("label_column")
    _check_keys(table, allowed, where)
    address = str(_require(table, "address", where))
    _check_address(address, "address", where)
    name = str(table.get("name", "arbiter") if role == "arbiter" else _require(table, "name", where))
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"[{where}] name {name!r} is not a valid party name")
    _check_name_characters(name, where)
    if name.lower() in RESERVED_NAMES:
        raise ConfigError(f"[{where}] name {name!r} is reserved: the workdir or the certificates folder holds "
                          f"a file or folder of that name ({', '.join(sorted(RESERVED_NAMES))})")
    if name.lower().endswith("-key"):
        raise ConfigError(f"[{where}] name {name!r} ends in '-key': the certificates folder holds each party's "
                          f"NAME.pem beside its key NAME-key.pem, so this party's certificate would overwrite the "
                          f"key of a party (or the CA, ca-key.pem) named {name[:-4]!r}")
    if len(name) > MAX_PARTY_NAME_CHARS:
        raise ConfigError(f"[{where}] name is {len(name)} characters long; the limit is {MAX_PARTY_NAME_CHARS} "
                          f"(a certificate's common name holds at most {MAX_PARTY_NAME_CHARS})")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"[{where}] name is {len(name.encode())} bytes long in UTF-8; the limit is "
                          f"{MAX_NAME_BYTES}")
    data = None
    if role != "arbiter":
        data = _path(base, _require(table, "data", where))
    cats = table.get("categorical_columns", [])
    if role == "arbiter" and cats:
        raise ConfigError("[arbiter] has no data, so no categorical_columns")
    if not isinstance(cats, list) or not all(isinstance(c, str) and c for c in cats):
        raise ConfigError(f"[{where}] categorical_columns must be a list of column names, got {cats!r}")
    crosses = _crosses(table.get("crosses", []), cats, where)
    ray_address = _ray_address(table.get("ray_address"), where)
    encoding = _text_encoding(table.get("encoding", "utf-8"), where)
    if role == "arbiter" and "encoding" in table:
        raise ConfigError("[arbiter] has no data, so no encoding")
    psi_memory_mb = _psi_memory(table, role, where)
    serve_address, store, store_table = (table.get(k) for k in ("serve_address", "store", "store_table"))
    if role == "arbiter" and (store or store_table):
        raise ConfigError("[arbiter] holds no rows to serve: no store or store_table (its serve_address is where "
                          "it serves the guest's decryptions when hosts keep encrypted weights)")
    for key, value in (("serve_address", serve_address), ("store", store), ("store_table", store_table)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"[{where}] {key} must be a non-empty string, got {value!r}")
    if serve_address is not None:
        _check_address(serve_address, "serve_address", where)
    if store is not None and "://" not in store:
        raise ConfigError(f"[{where}] store {store!r} must be an SQLAlchemy URL such as "
                          f"'sqlite:///features.db' or 'postgresql://user@db/bank' (files: use predict_data)")
    serve_cert, serve_key = _path(base, table.get("serve_cert")), _path(base, table.get("serve_key"))
    if (serve_cert is None) != (serve_key is None) or (serve_cert is not None and role != "guest"):
        raise ConfigError(f"[{where}] serve_cert and serve_key go together, in the guest's table only "
                          f"(HTTPS for its scoring API)")
    return PartyConfig(role=role, name=name, address=address, data=data,
                       id_column=str(table.get("id_column", "id")),
                       label_column=(str(table.get("label_column", "y")) if role == "guest" else None),
                       cert=_path(base, table.get("cert")), key=_path(base, table.get("key")),
                       predict_data=_path(base, table.get("predict_data")) if role != "arbiter" else None,
                       categorical_columns=tuple(cats), crosses=crosses, ray_address=ray_address,
                       encoding=encoding, psi_memory_mb=psi_memory_mb, serve_address=serve_address,
                       store=resolve_url(store, base) if store else store,     # sqlite: from the job file's folder
                       store_table=store_table, serve_cert=serve_cert, serve_key=serve_key)


def _crosses(value: Any, cats: list[str], where: str) -> tuple[tuple[str, ...], ...]:
    """``[["merchant", "city"], ...]``: each a list of two or more of this party's categorical columns."""
    if not isinstance(value, list) or not all(isinstance(c, list) for c in value):
        raise ConfigError(f'[{where}] crosses must be a list of column lists, e.g. [["merchant", "city"]], '
                          f"got {value!r}")
    out = []
    for cross in value:
        if len(cross) < 2 or len(set(cross)) != len(cross) or not all(isinstance(c, str) for c in cross):
            raise ConfigError(f"[{where}] a cross joins two or more distinct columns, got {cross!r}")
        unknown = [c for c in cross if c not in cats]
        if unknown:
            raise ConfigError(f"[{where}] cross {cross!r} names {unknown}, which are not among this party's "
                              f"categorical_columns {cats}: crosses are within one party's categorical columns")
        out.append(tuple(cross))
    return tuple(out)


def _text_encoding(value: Any, where: str) -> str:
    """The encoding of the party's CSV files, as its canonical name in ``ENCODINGS``."""
    canonical = canonical_encoding(value) if isinstance(value, str) else None
    if canonical is None:
        raise ConfigError(f"[{where}] encoding must be one of {', '.join(map(repr, ENCODINGS))} (the text encoding "
                          f"of the party's CSV files; Parquet is always UTF-8), got {value!r}")
    return canonical


def _psi_memory(table: dict, role: str, where: str) -> int:
    """``psi_memory_mb``: a whole number of MB > 0. The guest's sets the bucket count of a job's PSI (one
    bucket's points of every party must fit), so a guest with many IDs raises it to run with small hosts."""
    if "psi_memory_mb" not in table:
        return DEFAULT_MEMORY_MB
    if role == "arbiter":
        raise ConfigError("[arbiter] takes no part in PSI, so no psi_memory_mb")
    value = table["psi_memory_mb"]
    if not _integer(value) or value < 1:
        raise ConfigError(f"[{where}] psi_memory_mb must be a whole number of megabytes > 0 (the PSI memory "
                          f"for one bucket's points; default {DEFAULT_MEMORY_MB}), got {value!r}")
    return int(value)


def _ray_address(value: Any, where: str) -> str | None:
    """``"local"`` or ``"HOST:PORT"`` of the party's own Ray cluster (absent: the local process pool)."""
    if value is None:
        return None
    if isinstance(value, str):
        host, _, port = value.strip().rpartition(":")
        if value.strip() == "local":
            return "local"
        if "://" in value:
            raise ConfigError(f'[{where}] ray_address must be "HOST:PORT" of the head of the party\'s own Ray '
                              f"cluster (its GCS port, ray start --head --port=PORT), without a scheme: Ray "
                              f"Client (ray://) and dashboard (http://) addresses are not supported, got {value!r}")
        if host and port.isdigit() and 0 < int(port) < 65536 and not any(c.isspace() for c in value.strip()):
            return value.strip()
    raise ConfigError(f'[{where}] ray_address must be "local" (a private Ray runtime on this machine) or '
                      f'"HOST:PORT" of the head of the party\'s own Ray cluster (no spaces, no scheme), '
                      f"got {value!r}")


def _dataclass_from(cls, table: dict, where: str):
    names = {f.name: f for f in fields(cls)}
    _check_keys(table, set(names), where)
    kwargs = {}
    for key, value in table.items():
        default = getattr(cls(), key)
        want = type(default)
        if want is tuple and isinstance(value, list):
            value = tuple(value)
        if want is tuple and isinstance(value, tuple):        # numpy integers from the Python API: ints
            value = tuple(int(v) if _integer(v) else v for v in value)
        if want is int and _integer(value):
            value = int(value)
        if want is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"[{where}] {key} must be {want.__name__}, got {value!r}")
        if want is float and not math.isfinite(value):
            if key == "dp_epsilon" and value > 0:
                raise ConfigError(f"[{where}] dp_epsilon must be a finite number > 0, got {value}: for no label-DP "
                                  'noise set label_dp = "off" instead')
            raise ConfigError(f"[{where}] {key} must be a finite number, got {value}")
        kwargs[key] = value
    return cls(**kwargs)


def _integer(value: Any) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_model(m: ModelConfig, given: set[str] = frozenset()) -> None:
    """``given``: the keys the ``[model]`` table set (another model type's are refused)."""
    if m.type not in ("logistic", "embedding", "secureboost"):
        raise ConfigError(f"[model] type {m.type!r} is not supported (supported: 'logistic', 'embedding', "
                          "'secureboost')")
    _check_family(m, set(given))
    # the basic ranges first, so a wrong value is named rather than a rule it breaks downstream
    for key, ok, rule in (("epochs", m.epochs >= 1, ">= 1"),
                          ("batch_size", m.batch_size >= 0, ">= 1 (or 0: the model family's default)"),
                          ("learning_rate", m.learning_rate > 0, "> 0"), ("l2", m.l2 >= 0, ">= 0"),
                          ("tolerance", m.tolerance >= 0, ">= 0"), ("seed", m.seed >= 0, ">= 0")):
        if not ok:
            raise ConfigError(f"[model] {key} must be {rule}, got {getattr(m, key)}")
    if m.type == "secureboost":
        from ..models.trees.params import TreeParams
        try:
            TreeParams(num_trees=m.num_trees, max_depth=m.max_depth, max_bin=m.max_bin, learning_rate=m.learning_rate,
                       l2=m.l2, min_child_weight=m.min_child_weight, min_leaf_rows=m.min_leaf_rows,
                       subsample=m.subsample, colsample=m.colsample, seed=m.seed, patience=m.patience,
                       key_bits=m.key_bits,
                       allow_short_keys=m.allow_short_keys, encryption=m.encryption)
        except ValueError as exc:
            raise ConfigError(f"[model] {exc}") from None
    if m.embedding_dim < 1 or m.hash_buckets < 0 or m.min_category_rows < 1:
        raise ConfigError("[model] embedding_dim and min_category_rows must be >= 1, hash_buckets >= 0")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in m.hidden_units):
        raise ConfigError(f"[model] hidden_units must be a list of positive integers, got {list(m.hidden_units)}")
    _check_tower_size(m)
    if m.min_rows_per_release < 1:
        raise ConfigError("[model] min_rows_per_release must be >= 1 (1 releases every sum: no protection)")
    smallest_batch = m.batch_size or 512           # batch_for's least default
    if m.type != "secureboost" and smallest_batch < 2 * m.min_rows_per_release:
        # a batch's whole-batch sums are held back below the floor, and a batch_schedule batch can be half
        # a batch_size long
        raise ConfigError(f"[model] batch_size must be at least 2 x min_rows_per_release "
                          f"({2 * m.min_rows_per_release}), got "
                          f"{m.batch_size or f'the default, which can be {smallest_batch}'}: a batch's "
                          "whole-batch gradient sums (dense layers, a linear model's weights) are released only "
                          "over min_rows_per_release rows, else that step gets no gradient for them, and the "
                          "last batch of an epoch may hold half a batch_size of rows")
    if m.early_stopping not in ("auto", "on", "off"):
        raise ConfigError(f"[model] early_stopping must be 'auto', 'on' or 'off', got {m.early_stopping!r}")
    if not 0 < m.validation_fraction < 0.5 or not m.patience >= 1 or not 0 <= m.min_epochs < m.epochs:
        raise ConfigError("[model] validation_fraction must be in (0, 0.5), patience >= 1 and min_epochs in "
                          "[0, epochs) (0: half of epochs)")
    if m.guest_refit not in ("auto", "on", "off") or (m.guest_refit == "on" and m.type != "embedding"):
        raise ConfigError(f"[model] guest_refit must be 'auto', 'on' (the embedding model only) or 'off', "
                          f"got {m.guest_refit!r} for type {m.type!r}")
    if m.refit_min_rows < 1:
        raise ConfigError(f"[model] refit_min_rows must be >= 1, got {m.refit_min_rows}")
    if m.table_release not in ("epoch", "eager"):
        raise ConfigError(f"[model] table_release must be 'epoch' or 'eager', got {m.table_release!r}")
    if m.label_dp not in ("auto", "on", "off"):
        raise ConfigError(f"[model] label_dp must be 'auto', 'on' or 'off', got {m.label_dp!r}")
    _check_host_weights(m, set(given))
    if not m.dp_epsilon > 0 or not 0 < m.dp_delta < 1 or not m.clip_norm > 0 or not 0 < m.dp_guest_share < 1:
        raise ConfigError("[model] dp_epsilon and clip_norm must be > 0, dp_delta and dp_guest_share in (0, 1)")
    _check_magnitudes(m)
    if not 0 <= m.dp_binning_share < 1:
        raise ConfigError(f"[model] dp_binning_share must be in [0, 1) (in (0, 1) with [preprocess] and label-DP), "
                          f"got {m.dp_binning_share}")
    if not 0 <= m.coef_bits <= 24:
        raise ConfigError(f"[model] coef_bits must be in [0, 24] (0: 12 with label-DP, else 24), got {m.coef_bits}")
    if m.optimizer not in ("sgd", "adam"):
        raise ConfigError(f"[model] optimizer must be 'sgd' or 'adam', got {m.optimizer!r}")
    if m.key_bits < 512 or m.key_bits % 256:
        raise ConfigError(f"[model] key_bits must be a multiple of 256 and >= 512, got {m.key_bits}")
    if m.key_bits > MAX_KEY_BITS:
        raise ConfigError(f"[model] key_bits must be at most {MAX_KEY_BITS}, got {m.key_bits}: generating a Paillier "
                          "key takes about 10 times longer each time key_bits doubles (seconds at 8192, a minute at "
                          "16384, hours beyond), while the other parties wait for it; 2048 or 3072 is usual")
    if m.key_bits < MIN_KEY_BITS and not m.allow_short_keys:
        raise ConfigError(
            f"[model] key_bits = {m.key_bits} is below {MIN_KEY_BITS}: a Paillier modulus that short can be "
            "factored, and whoever factors n decrypts everything sent under it, including values computed "
            "from the labels. Use key_bits >= 2048, or for tests and benchmarks only set "
            "allow_short_keys = true in [model]")
    if m.approximation not in ("guest_expansion", "taylor"):
        raise ConfigError(f"[model] approximation must be 'guest_expansion' or 'taylor', got {m.approximation!r}")
    if m.encryption not in ("djn", "standard"):
        raise ConfigError(f"[model] encryption must be 'djn' or 'standard', got {m.encryption!r}")
    if m.randomness not in ("arbiter", "local"):
        raise ConfigError(f"[model] randomness must be 'arbiter' or 'local', got {m.randomness!r}")


def _check_host_weights(m: ModelConfig, given: set[str]) -> None:
    """``host_weights``: "auto" (the default) is "encrypted" for the embedding model unless label-DP or early
    stopping is "on". "encrypted" is the embedding model's only; with it label-DP and early stopping cannot be
    asked for, since no host gets anything decrypted (nothing to noise) and a stop decision would be the one
    label-dependent thing a host learns."""
    if m.host_weights not in ("auto", "plain", "encrypted"):
        raise ConfigError(f"[model] host_weights must be 'auto', 'plain' or 'encrypted', got {m.host_weights!r}")
    if not m.host_l2 >= 0 or m.host_l2 > MAX_L2:
        raise ConfigError(f"[model] host_l2 must be in [0, {MAX_L2:g}], got {m.host_l2}")
    if m.host_min_rows < 1:
        raise ConfigError(f"[model] host_min_rows must be >= 1, got {m.host_min_rows}")
    if not m.encrypted_hosts:
        for key in ENCRYPTED_HOST_SETTINGS[1:]:
            if key in given and getattr(m, key) != getattr(ModelConfig, key):
                raise ConfigError(f'[model] {key} applies to host_weights = "encrypted" only: remove it')
        return
    if m.type != "embedding":
        raise ConfigError(f'[model] host_weights = "encrypted" needs type = "embedding", got {m.type!r}')
    if m.label_dp == "on":
        raise ConfigError('[model] label_dp = "on" with host_weights = "encrypted": not needed, no host ever gets a '
                          "value decrypted (its weights, scores and gradient sums stay ciphertexts under the "
                          "arbiter's key), so there is nothing to noise; use label_dp = \"auto\" or \"off\"")
    if m.early_stopping == "on":
        raise ConfigError('[model] early_stopping = "on" with host_weights = "encrypted": the stop decision would be '
                          "the one value depending on the labels that reaches a host; training runs its fixed "
                          'epochs (use early_stopping = "auto" or "off")')


def _check_tower_size(m: ModelConfig) -> None:
    """Refuse towers too large to train under encryption: the gradient of each weight is a sum of
    ciphertext products over the batch's rows, every batch, so such a size runs for hours before its
    first batch ends, and the peers give up waiting (the error then names a "hung" party)."""
    if m.embedding_dim > MAX_EMBEDDING_DIM:
        raise ConfigError(f"[model] embedding_dim must be at most {MAX_EMBEDDING_DIM}, got {m.embedding_dim}: each "
                          "embedding value's gradient is summed under encryption, a ciphertext operation per value, "
                          "row and batch (the default is 8)")
    wide = [h for h in m.hidden_units if h > MAX_HIDDEN_UNITS]
    if wide:
        raise ConfigError(f"[model] hidden_units: each layer must have at most {MAX_HIDDEN_UNITS} units, got "
                          f"{list(m.hidden_units)}: each unit's weights get their gradients summed under encryption, "
                          "a ciphertext operation per weight, row and batch (the default is [32])")


def _check_magnitudes(m: ModelConfig) -> None:
    """Refuse settings far out of any sensible range: they make values too large for the fixed-point
    encoding of the ciphertexts, and training failed with an overflow error that pointed at the key."""
    for key, ok, rule in (("learning_rate", m.learning_rate <= MAX_LEARNING_RATE, f"<= {MAX_LEARNING_RATE:g}"),
                          ("l2", m.l2 <= MAX_L2, f"<= {MAX_L2:g}"),
                          ("clip_norm", m.clip_norm <= MAX_CLIP_NORM, f"<= {MAX_CLIP_NORM:g}"),
                          ("dp_epsilon", m.dp_epsilon >= MIN_DP_EPSILON, f">= {MIN_DP_EPSILON:g}")):
        if not ok:
            raise ConfigError(f"[model] {key} must be {rule}, got {getattr(m, key):g}: far out of any sensible "
                              "range, it makes values too large to encrypt (training would fail with a fixed-point "
                              "overflow)")


def load_job(path: str | Path) -> JobConfig:
    """Read and validate a job file; raise :class:`ConfigError` saying what is wrong."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"job file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_job(raw, path)


def parse_job(raw: dict, path: Path) -> JobConfig:
    """Validate a parsed job file; every problem is a :class:`ConfigError` naming the table."""
    try:
        return _parse_job(raw, path)
    except ConfigError:
        raise
    except (TypeError, AttributeError, ValueError, OverflowError) as exc:
        # A wrongly typed table or value somewhere the checks above did not anticipate.
        raise ConfigError(f"{path}: a table or value has the wrong type ({type(exc).__name__}: {exc})") from None


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(value).__name__}")
    return value


def _parse_job(raw: dict, path: Path) -> JobConfig:
    base = path.resolve().parent
    _table(raw, "top level")
    _check_keys(raw, {"job", "arbiter", "guest", "hosts", "model", "network", "tls", "scorecard", "preprocess",
                      "serving"},
                "top level")
    job = _table(raw.get("job", {}), "job")
    _check_keys(job, {"name", "workdir", "seed", "test_fraction", "baselines"}, "job")
    hosts_raw = raw.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise ConfigError("the job needs at least one [[hosts]] table")
    arbiter = _party(_table(_require(raw, "arbiter", "top level"), "arbiter"), "arbiter", "arbiter", base)
    guest = _party(_table(_require(raw, "guest", "top level"), "guest"), "guest", "guest", base)
    hosts = tuple(_party(_table(h, f"hosts.{i}"), "host", f"hosts.{i}", base) for i, h in enumerate(hosts_raw))
    names = [p.name for p in (guest, *hosts, arbiter)]
    folded = [n.casefold() for n in names]     # a case-insensitive file system holds one NAME.pem, one <workdir>/NAME
    dupes = sorted({n for n in names if folded.count(n.casefold()) > 1})
    if dupes:
        raise ConfigError(f"party names must be unique, ignoring case (each party has its own certificate files "
                          f"and output folder); repeated: {', '.join(dupes)}")
    addresses = [p.address for p in (guest, *hosts, arbiter)]
    shared = sorted({a for a in addresses if addresses.count(a) > 1})
    if shared:
        raise ConfigError(f"each party needs its own address; shared: {', '.join(shared)}")
    for key, kind, what in (("seed", numbers.Integral, "int"), ("test_fraction", numbers.Real, "int or float"),
                            ("baselines", bool, "bool"), ("name", str, "str"), ("workdir", str, "str")):
        value = job.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
            raise ConfigError(f"[job] {key} must be {what}, got {value!r}")
    test_fraction = float(job.get("test_fraction", 0.2))
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"[job] test_fraction must be in [0, 1), got {test_fraction}")
    model_table = _table(raw.get("model", {}), "model")
    model = _dataclass_from(ModelConfig, model_table, "model")
    if "dp_guest_share" not in model_table and guest.categorical_columns and uses(model.type, "dp_guest_share"):
        # a guest with embedding tables of its own needs more of the label-DP budget (docs/protocols.md)
        model = replace(model, dp_guest_share=GUEST_SHARE_WITH_TABLES)
    preprocess = None
    if "preprocess" in raw:
        preprocess = _dataclass_from(PreprocessConfig, _table(raw["preprocess"], "preprocess"), "preprocess")
        if "dp_binning_share" not in model_table and uses(model.type, "dp_binning_share"):
            model = replace(model, dp_binning_share=BINNING_SHARE)
    elif "dp_binning_share" in model_table:
        raise ConfigError("[model] dp_binning_share is the label-DP budget of [preprocess]'s counts, but the job "
                          "has no [preprocess] table")
    if model.type == "logistic" and model.label_dp == "auto" and (preprocess is None or not preprocess.woe):
        # what a host's gradient sums reveal of the labels is bounded only by the noise: one-hot LR's
        # per-category sums of nested columns differ by single rows, and a numeric column that is zero
        # on all but a few rows of a batch gives those rows' residuals (docs/protocols.md)
        model = replace(model, label_dp="on")
    _check_model(model, set(model_table))
    network = _dataclass_from(NetworkConfig, _table(raw.get("network", {}), "network"), "network")
    if not (network.connect_timeout > 0 and network.peer_timeout > 0 and network.min_send_rate > 0):
        raise ConfigError("[network] connect_timeout, peer_timeout and min_send_rate must be > 0")
    scorecard = _scorecard(_table(raw.get("scorecard", {}), "scorecard"))
    if preprocess is not None:
        _check_preprocess(preprocess, model)
        if model.encrypted_hosts:
            raise ConfigError('[preprocess] with [model] host_weights = "encrypted" is not built: a host with encrypted '
                              "weights bins its numeric columns itself (10 quantile bins)")
    tls = _table(raw.get("tls", {}), "tls")
    _check_keys(tls, {"ca"}, "tls")
    serving = _dataclass_from(ServingConfig, _table(raw.get("serving", {}), "serving"), "serving")
    if serving.unknown_id not in ("refuse", "average"):
        raise ConfigError(f"[serving] unknown_id must be 'refuse' or 'average', got {serving.unknown_id!r}")
    if not (serving.timeout > 0 and serving.max_batch >= 1 and serving.reasons >= 0 and serving.ids_per_minute >= 0):
        raise ConfigError("[serving] timeout must be > 0, max_batch >= 1, reasons >= 0 and ids_per_minute >= 0")
    if not (serving.read_timeout > 0 and serving.max_connections >= 1):
        raise ConfigError("[serving] read_timeout must be > 0 and max_connections >= 1")
    if serving.quota_store and ("://" not in serving.quota_store or not serving.ids_per_minute):
        raise ConfigError(f"[serving] quota_store {serving.quota_store!r} must be an SQLAlchemy URL such as "
                          "'sqlite:///quota.db' or 'postgresql://user@db/bank', and goes with ids_per_minute > 0")
    if serving.quota_store:           # a relative sqlite path: from the job file's folder, as every other path
        serving = replace(serving, quota_store=resolve_url(serving.quota_store, base))
    job_name = str(job.get("name", path.stem))
    if len(job_name.encode()) > MAX_NAME_BYTES:   # links carry "<job>/<task>" in every frame
        raise ConfigError(f"[job] name is {len(job_name.encode())} bytes long; the limit is {MAX_NAME_BYTES}")
    return JobConfig(
        path=path, name=job_name,
        workdir=_path(base, job.get("workdir", "runs/" + path.stem)),
        seed=int(job.get("seed", 42)), test_fraction=test_fraction,
        baselines=bool(job.get("baselines", False)),
        arbiter=arbiter, guest=guest, hosts=hosts, model=model, network=network, scorecard=scorecard,
        ca=_path(base, tls.get("ca")), preprocess=preprocess, serving=serving)


def _scorecard(table: dict) -> ScorecardConfig:
    table = dict(table)
    if "base_score" in table:
        score = table.pop("base_score")
        if "base_points" in table and table["base_points"] != score:
            raise ConfigError("[scorecard] base_score and base_points are the same setting; give one")
        table["base_points"] = score
    sc = _dataclass_from(ScorecardConfig, table, "scorecard")
    if sc.problem():
        raise ConfigError(f"[scorecard] {sc.problem()}")
    return sc


def _check_preprocess(p: PreprocessConfig, model: ModelConfig) -> None:
    if p.binning not in BINNING_METHODS:
        raise ConfigError(f"[preprocess] binning must be 'quantile' or 'equal_width', got {p.binning!r}")
    if not 2 <= p.bins <= 1000:
        raise ConfigError(f"[preprocess] bins must be between 2 and 1000, got {p.bins}")
    if p.min_bin_rows < max(1, model.min_rows_per_release):
        raise ConfigError(f"[preprocess] min_bin_rows must be >= [model] min_rows_per_release "
                          f"({model.min_rows_per_release}): a bin's WOE tells a host its rows' event count, "
                          f"got {p.min_bin_rows}")
    if p.min_bin_events < 1:
        raise ConfigError(f"[preprocess] min_bin_events must be >= 1: with label_dp = 'off' a host bin with no "
                          f"event (or no non-event) gives the host the label of each of its rows, got "
                          f"{p.min_bin_events}")
    if not p.iv_threshold >= 0 or p.iv_threshold == float("inf"):
        raise ConfigError(f"[preprocess] iv_threshold must be a finite number >= 0, got {p.iv_threshold}")
    if p.iv_top_k_guest < 0 or p.iv_top_k_host < 0:
        raise ConfigError("[preprocess] iv_top_k_guest and iv_top_k_host must be >= 0 (0: no limit)")
    if model.type != "logistic":
        raise ConfigError(f"[preprocess] works with [model] type = 'logistic' (a scorecard is a binned logistic "
                          f"regression), not {model.type!r}")
    if model.label_dp_on and model.dp_binning_share <= 0:
        raise ConfigError("[model] dp_binning_share must be > 0 with [preprocess] and label-DP: the per-bin "
                          "event counts are noised from that share of the budget")
