"""Property-based fuzzing of every decoder that reads bytes or files from outside.

Each decoder either returns a value or raises its documented error type, and
does so in bounded time, whatever it is fed:

=========================================  =====================================
decoder                                    documented error
=========================================  =====================================
``parties.frames.frame_length/decode_frame``  ``FrameError`` (a ``ProtocolError``)
``parties.frames.LinkDecoder.decode``      ``FrameError``
``vfl.protocol.messages.decode_payload``            ``MessageError``
``crypto.EncryptedArray.from_bytes``       ``ValueError``
``vfl.job.config.parse_job`` / ``load_job``    ``ConfigError``
``vfl.io.tables.check_columns`` / ``read_ids``  ``DataError``
=========================================  =====================================

Inputs are random bytes, valid encodings with random mutations (flipped,
inserted, deleted bytes, truncation, appended junk) and structured random
values (JSON-like control messages, TOML-like job tables, CSV-like files).
Runs are derandomised (the same cases every run, no example database written)
with bounded example counts and a per-example deadline, so the module takes
well under 30 s; set ``VFL_FUZZ_SCALE`` (e.g. 20) to multiply the example
counts for a deeper local run.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from crypto import EncryptedArray, generate_keypair
from parties import frames
from parties.frames import Frame, FrameError, Kind, LinkDecoder, LinkEncoder
from vfl.protocol.channel import ProtocolError
from vfl.job.config import ConfigError, load_job, parse_job
from vfl.io.tables import DataError, check_columns, read_ids
from vfl.protocol.messages import BigInts, MessageError, decode_payload, encode_payload

_SCALE = max(1.0, float(os.environ.get("VFL_FUZZ_SCALE", "1")))


def fuzz(examples: int, deadline_ms: int = 2000, **kw):
    """Bounded, reproducible hypothesis settings for one fuzz test."""
    return settings(max_examples=int(examples * _SCALE), deadline=timedelta(milliseconds=deadline_ms),
                    derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much], **kw)


# ---------------------------------------------------------------------------- mutation
_OPS = st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append", "splice"])


@st.composite
def mutated(draw, seeds):
    """One of ``seeds`` (valid encodings) with 1-4 random byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(_OPS)
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "splice" and len(data) >= 8:
            # overwrite a length-like field with an extreme value
            width = draw(st.sampled_from([1, 2, 4, 8]))
            j = min(i, len(data) - width)
            value = draw(st.sampled_from([0, 1, (1 << 8 * width) - 1, 1 << (8 * width - 1),
                                          draw(st.integers(0, (1 << 8 * width) - 1))]))
            data[j:j + width] = value.to_bytes(width, "big")
    return bytes(data)


# ---------------------------------------------------------------------------- frames
JOB = "fuzz-job"
_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def valid_frames(draw):
    kind = draw(st.sampled_from(list(Kind)))
    step = draw(_names) if kind == Kind.DATA else ""
    payload = (draw(st.binary(max_size=64)) if kind == Kind.DATA
               else draw(st.text(max_size=20)).encode() if kind == Kind.BYE else b"")
    return Frame(kind, draw(_names), draw(_names), draw(_names), step,
                 draw(st.integers(0, (1 << 64) - 1)), payload)


_FRAME_SEEDS = [frames.encode_frame(f) for f in (
    Frame(Kind.HELLO, JOB, "guest", "host1", "", 0),
    Frame(Kind.DATA, JOB, "guest", "host1", "lr/epoch3/batch7/enc_u", 5, b"\x01{}"),
    Frame(Kind.DATA, JOB, "gu\u00e9st", "host1", "s", 1, bytes(range(256))),
    Frame(Kind.BYE, JOB, "guest", "host1", "", 9, b"aborted (PeerLost)"),
)]


def _decode_body(data: bytes):
    """What the transport does with bytes on a link: length prefix, then the body."""
    if len(data) < frames.LENGTH_BYTES:
        return frames.decode_frame(data)          # also: a truncated body
    n = frames.frame_length(data[:frames.LENGTH_BYTES])
    assert frames.MIN_BODY_BYTES <= n <= frames.MAX_FRAME_BYTES
    return frames.decode_frame(data[frames.LENGTH_BYTES:frames.LENGTH_BYTES + n])


@fuzz(1500)
@given(st.one_of(mutated(_FRAME_SEEDS), st.binary(max_size=300)))
def test_frame_decoder_raises_only_frame_error(data):
    try:
        frame = _decode_body(data)
    except FrameError:
        return
    assert isinstance(frame, Frame) and isinstance(frame.kind, Kind)
    assert frame.job and frame.sender and frame.receiver and (frame.kind == Kind.DATA) == bool(frame.step)


@fuzz(400)
@given(valid_frames())
def test_frames_round_trip(frame):
    data = frames.encode_frame(frame)
    assert frames.frame_length(data[:8]) == len(data) - 8
    assert frames.decode_frame(data[8:]) == frame


@fuzz(400)
@given(st.lists(st.one_of(mutated(_FRAME_SEEDS), st.sampled_from(_FRAME_SEEDS)), min_size=1, max_size=6),
       st.sampled_from([("guest", "host1"), ("host1", "guest")]))
def test_link_decoder_raises_only_frame_error(stream, ends):
    dec = LinkDecoder(JOB, *ends)
    for data in stream:
        try:
            frames.frame_length(data[:frames.LENGTH_BYTES])
            frame = dec.decode(data[frames.LENGTH_BYTES:])
        except FrameError:
            return
        assert frame.seq == dec.next_seq - 1 and (frame.sender, frame.receiver) == ends


@fuzz(200)
@given(st.lists(st.tuples(_names, st.binary(max_size=40)), max_size=5), st.integers(0, 4))
def test_link_encoder_output_is_accepted_by_its_decoder(messages, bye):
    enc, dec = LinkEncoder(JOB, "guest", "host1"), LinkDecoder(JOB, "guest", "host1")
    wire = [enc.hello()] + [enc.data(s, p) for s, p in messages] + ([enc.bye("x" * bye)] if bye else [])
    got = [dec.decode(w[8:]) for w in wire]
    assert [(f.step, f.payload) for f in got if f.kind == Kind.DATA] == messages


# ---------------------------------------------------------------------------- payloads
_PK, _SK = generate_keypair(512)
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16))
_json_values = st.recursive(_json_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), c, max_size=4)),
                            max_leaves=16)
_controls = st.dictionaries(st.text(max_size=8), _json_values, max_size=6)
_dtypes = st.sampled_from(["<f8", "<f4", ">f8", "<i8", "<i4", "|i1", "<u2", "|u1", "|b1", "|S1", "|S7", "<f2"])


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(_dtypes))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    raw = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@st.composite
def bigints(draw):
    width = draw(st.integers(32, 72))
    return BigInts.of(draw(st.lists(st.integers(0, (1 << 8 * width) - 1), max_size=5)), width)


_ENC = EncryptedArray.encrypt(_PK, np.array([[1.5, -2.0], [0.0, 3.25]]))
_PAYLOAD_SEEDS = [encode_payload(p) for p in (
    {"cmd": "start", "epoch": 3, "n": format(2**2047 + 1, "x"), "x": [1.5, None, True, {"k": "v"}]},
    {},
    np.linspace(-1, 1, 12).reshape(3, 4), np.arange(7, dtype=np.int32), np.array([b"id-1", b"id-22"]),
    np.zeros(()), np.zeros((0, 3), dtype=np.uint8),
    BigInts.of([0, 1, 2**255 + 17], 32), BigInts.of([], 4),
    _ENC, EncryptedArray.encrypt(_PK, np.zeros((1,))),
)]

# JSON-looking text: the characters and tokens a JSON parser cares about
_json_text = st.lists(st.sampled_from(['{', '}', '[', ']', ',', ':', '"', '\\', '"a"', '"a":', '1', '-', '0',
                                       '1e999', '.5', 'NaN', 'Infinity', '-Infinity', 'true', 'null', ' ',
                                       '\\u0000', '\\ud800', '9' * 40, '\x00', '\u00e9']),
                      max_size=40).map("".join)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    return a == b


def _decode_or_message_error(data: bytes):
    try:
        return decode_payload(data)
    except MessageError as exc:
        assert str(exc)
        return None


@fuzz(500)
@given(st.one_of(_controls, arrays(), bigints()))
def test_payloads_round_trip(payload):
    assert _same(decode_payload(encode_payload(payload)), payload)


@fuzz(2500)
@given(mutated(_PAYLOAD_SEEDS))
def test_mutated_payloads_raise_only_message_error(data):
    back = _decode_or_message_error(data)
    if isinstance(back, np.ndarray):
        assert back.dtype.kind in "fiubS" and back.size * back.dtype.itemsize <= len(data)
    elif isinstance(back, BigInts):
        assert all(0 <= v < 1 << 8 * back.width for v in back.values)
    elif isinstance(back, EncryptedArray):
        assert math.prod(back.shape) * 2 * ((back.public_key.bits + 7) // 8) <= len(data)


@fuzz(1500)
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.sampled_from([1, 2, 3, 4]), st.binary(max_size=120)).map(lambda t: bytes([t[0]]) + t[1]),
                 _json_text.map(lambda t: b"\x01" + t.encode("utf-8", "surrogatepass"))))
def test_random_payload_bytes_raise_only_message_error(data):
    back = _decode_or_message_error(data)
    if isinstance(back, dict):
        text = json.dumps(back, allow_nan=False)       # finite, serialisable again
        assert decode_payload(b"\x01" + text.encode("utf-8", "surrogatepass")) == back


# Control messages built as text, each tagged with whether it must be refused: NaN and
# infinities, floats overflowing to inf, repeated keys, nesting deeper than 32, over-long
# integer or float literals. Everything else must decode exactly as json.loads reads it.
_LIMIT_DEPTH, _LIMIT_DIGITS = 32, 1300
_ok_scalar = st.one_of(
    st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40), st.text(max_size=8),
              st.floats(allow_nan=False, allow_infinity=False)).map(json.dumps),
    st.integers(1, _LIMIT_DIGITS).map(lambda n: "-" * (n % 2) + "7" * n)).map(lambda t: (t, False, 0))
_bad_scalar = st.one_of(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-2.5e400"]),
                        st.integers(_LIMIT_DIGITS + 1, 6000).map(lambda n: "-" + "9" * n),
                        st.integers(65, 400).map(lambda n: "0." + "1" * (n - 2))).map(lambda t: (t, True, 0))
_nested = st.integers(1, 3000).map(lambda d: ("[" * d + "]" * d, False, d))
_json_keys = st.sampled_from(["a", "b", "n", "\u00e9", "[{", "\"]", "\\"])


def _json_container(children):
    def as_list(items):
        return ("[" + ", ".join(t for t, _, _ in items) + "]", any(h for _, h, _ in items),
                1 + max((d for _, _, d in items), default=0))

    def as_object(pairs):
        keys = [k for k, _ in pairs]
        return ("{" + ", ".join(f"{json.dumps(k)}: {t}" for k, (t, _, _) in pairs) + "}",
                len(set(keys)) < len(keys) or any(h for _, (_, h, _) in pairs),
                1 + max((d for _, (_, _, d) in pairs), default=0))

    return st.one_of(st.lists(children, max_size=4).map(as_list),
                     st.lists(st.tuples(_json_keys, children), max_size=4).map(as_object))


_json_docs = st.lists(st.tuples(_json_keys, st.recursive(
    st.one_of(_ok_scalar, _ok_scalar, _ok_scalar, _bad_scalar, _nested), _json_container, max_leaves=12)),
    max_size=5)


def _document(pairs):
    keys = [k for k, _ in pairs]
    text = "{" + ", ".join(f"{json.dumps(k)}: {t}" for k, (t, _, _) in pairs) + "}"
    depth = 1 + max((d for _, (_, _, d) in pairs), default=0)
    hostile = len(set(keys)) < len(keys) or any(h for _, (_, h, _) in pairs) or depth > _LIMIT_DEPTH
    return text, hostile, depth


@fuzz(1500)
@given(_json_docs.map(_document))
def test_control_messages_are_refused_exactly_when_hostile(doc):
    text, hostile, depth = doc
    data = b"\x01" + text.encode()
    if hostile:
        with pytest.raises(MessageError):
            decode_payload(data)
    else:
        assert decode_payload(data) == json.loads(text)


# Array and integer-array headers with extreme fields: dtype strings numpy would accept
# but the wire must not, up to 80 dimensions, sizes that overflow 64 bits.
_dtype_strings = st.sampled_from(["<f8", "|b1", "|S3", ">i4", "|u1", "<f2", "S0", "|S0", "<U4", "i4,i4", "|O",
                                  "|V8", "<M8[s]", "float64", ">c16", "(2,)<i4", "<f8 ", "\u00e9", "", "<f",
                                  "|S99999999999", "<i0", "=f8"])
_dims = st.one_of(st.integers(0, 5), st.sampled_from([2**31, 2**32, 2**63, 2**64 - 1, 2**62 + 1]),
                  st.integers(0, 2**64 - 1))


@st.composite
def array_blobs(draw) -> bytes:
    dtype = draw(_dtype_strings).encode()
    shape = draw(st.lists(_dims, max_size=draw(st.sampled_from([3, 3, 40, 80]))))
    declared = len(shape) if draw(st.integers(0, 9)) else draw(st.integers(0, 255))
    head = struct.pack(">BH", 2, len(dtype)) + dtype + struct.pack(">B", declared)
    head += b"".join(struct.pack(">Q", d) for d in shape)
    count = math.prod(shape)
    size = count * 8 if count * 8 <= 4096 else draw(st.integers(0, 64))
    return head + draw(st.binary(min_size=size, max_size=size)) + draw(st.binary(max_size=2))


@st.composite
def bigint_blobs(draw) -> bytes:
    width = draw(st.sampled_from([0, 1, 2, 8, 256, 65535]))
    count = draw(st.one_of(st.integers(0, 4), st.sampled_from([2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)))
    size = width * count if width * count <= 2048 else draw(st.integers(0, 64))
    return struct.pack(">BHQ", 4, width, count) + draw(st.binary(min_size=size, max_size=size))


@fuzz(1500)
@given(st.one_of(array_blobs(), bigint_blobs()))
@example(struct.pack(">BH3sB3Q", 2, 3, b"<f8", 3, 0, 2**32, 2**32))   # empty, but numpy: "array is too big"
def test_hostile_array_headers_raise_only_message_error(data):
    back = _decode_or_message_error(data)
    if isinstance(back, np.ndarray):
        assert back.dtype.kind in "fiubS" and back.ndim <= 32 and back.nbytes <= len(data)
    elif back is not None:
        assert isinstance(back, BigInts) and len(back.values) * back.width == len(data) - 11


@fuzz(600)
@given(st.one_of(mutated([_ENC.to_bytes(), EncryptedArray.encrypt(_PK, np.ones(3)).to_bytes()]),
                 st.binary(max_size=200),
                 st.binary(max_size=120).map(lambda b: b"VFLE\x01" + b)),
       st.booleans())
def test_encrypted_array_from_bytes_raises_only_value_error(data, with_key):
    try:
        back = EncryptedArray.from_bytes(data, _PK if with_key else None)
    except ValueError:
        return
    assert back.public_key.n > 0 and (not with_key or back.public_key == _PK)


# ---------------------------------------------------------------------------- job files
_KEYS = ["job", "arbiter", "guest", "hosts", "model", "network", "tls", "scorecard", "name", "address", "data",
         "id_column", "label_column", "cert", "key", "predict_data", "categorical_columns", "epochs", "key_bits",
         "seed", "test_fraction", "baselines", "workdir", "ca", "hidden_units", "dp_epsilon", "connect_timeout",
         "peer_timeout", "base_odds", "pdo", "type", "allow_short_keys", "label_dp", "epoch"]
_toml_scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=12),
                          st.sampled_from(["guest", "host1", "arbiter", "127.0.0.1:9000", "[::1]:9", "h:x", "a:1",
                                           "djn", "logistic", "embedding", "on", "auto", "x.csv", "/", ".a"]))
_toml_values = st.recursive(_toml_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.sampled_from(_KEYS), c, max_size=4)), max_leaves=10)


def _party(name: str, port: int, data: bool = True) -> dict:
    d = {"name": name, "address": f"127.0.0.1:{port}"}
    if data:
        d["data"] = f"{name}.csv"
    return d


_VALID_JOB = {"job": {"name": "j", "seed": 1, "test_fraction": 0.25}, "guest": _party("guest", 9001),
              "hosts": [_party("host1", 9002)], "arbiter": _party("arbiter", 9003, data=False),
              "model": {"type": "embedding", "key_bits": 2048, "epochs": 2, "hidden_units": [4]},
              "network": {"connect_timeout": 5.0}, "scorecard": {"pdo": 20.0}, "tls": {"ca": "ca.pem"}}


@st.composite
def job_tables(draw):
    """A valid job table with 1-3 sections or keys replaced by random TOML-like values, or
    an entirely random table."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.dictionaries(st.sampled_from(_KEYS), _toml_values, max_size=8))
    raw = json.loads(json.dumps(_VALID_JOB))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(_VALID_JOB)))
        where = raw.get(section)
        if section == "hosts" and isinstance(where, list) and where and isinstance(where[0], dict):
            where = where[0] if draw(st.booleans()) else where
        if isinstance(where, dict) and draw(st.integers(0, 3)):
            key = draw(st.sampled_from(sorted(where) + _KEYS))
            if draw(st.integers(0, 5)):
                where[key] = draw(_toml_values)
            else:
                where.pop(key, None)
        elif isinstance(where, list) and draw(st.booleans()):
            where.append(draw(_toml_values))
        else:
            raw[section] = draw(_toml_values)
    return raw


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def _toml_document(raw: dict) -> str:
    return "\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in raw.items()) + "\n"


def _parse_or_config_error(fn, *args):
    try:
        job = fn(*args)
    except ConfigError as exc:
        assert str(exc)
        return None
    assert job.name and job.hosts and len({p.name for p in job.parties}) == len(job.parties)
    return job


def _config_lets_errors_escape() -> bool:
    """Whether vfl/job/config.py still lets a non-ConfigError out on a few known-bad inputs."""
    bad = [{**_VALID_JOB, "job": 1}, {**_VALID_JOB, "model": []}, {**_VALID_JOB, "hosts": [[1]]},
           {**_VALID_JOB, "job": {"test_fraction": [1]}}, {**_VALID_JOB, "job": {"seed": "x"}}]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "job.toml").write_bytes(b'[job]\nname = "\xff"\n')
        calls = [lambda raw=raw: parse_job(raw, Path(d) / "job.toml") for raw in bad]
        calls.append(lambda: load_job(Path(d) / "job.toml"))
        for call in calls:
            try:
                call()
            except ConfigError:
                pass
            except Exception:  # noqa: BLE001 - exactly what is being probed
                return True
    return False


# Until vfl/job/config.py is hardened these two fuzzers fail (strict xfail); once the probe above
# finds nothing, they run as ordinary tests and must pass.
_CONFIG_ESCAPES = pytest.mark.xfail(
    _config_lets_errors_escape(), strict=True, raises=(TypeError, AttributeError, ValueError, UnicodeDecodeError),
    reason="vfl/job/config.py: parse_job lets TypeError/AttributeError/ValueError escape for wrongly typed "
           "tables ([job] = 1, model = [], test_fraction = [..], seed = 'x', hosts = [[..]]) and load_job "
           "lets UnicodeDecodeError escape for a non-UTF-8 file")


def test_valid_job_template_parses(tmp_path):
    assert parse_job(json.loads(json.dumps(_VALID_JOB)), tmp_path / "job.toml").name == "j"
    (tmp_path / "job.toml").write_text(_toml_document(_VALID_JOB))
    assert load_job(tmp_path / "job.toml").hosts[0].name == "host1"


@_CONFIG_ESCAPES
@fuzz(1200, phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False)
@given(job_tables())
def test_parse_job_raises_only_config_error(raw):
    _parse_or_config_error(parse_job, raw, Path("/nonexistent/job.toml"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_toml_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=200),
    st.lists(st.sampled_from(["[job]", "[[hosts]]", "[model]", "[guest]", "[arbiter]", "name", "=", " ", "\n",
                              '"x"', "'x'", "1", "1.5", "nan", "inf", "true", "[", "]", "{", "}", ",", ".", "#",
                              '"""', "\\", "key_bits", "address", '"127.0.0.1:1"', "1979-05-27", "\x00"]),
             max_size=40).map("".join))


@fuzz(500)
@given(_toml_text)
def test_load_job_on_random_text_raises_only_config_error(scratch, text):
    path = scratch / "text.toml"
    path.write_text(text, encoding="utf-8")
    _parse_or_config_error(load_job, path)


@_CONFIG_ESCAPES
@fuzz(500, phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False)
@given(st.one_of(job_tables().map(lambda raw: _toml_document(raw).encode()), st.binary(max_size=100)))
def test_load_job_on_random_toml_and_bytes_raises_only_config_error(scratch, data):
    path = scratch / "doc.toml"
    path.write_bytes(data)
    _parse_or_config_error(load_job, path)


# ---------------------------------------------------------------------------- CSV headers
_csv_cells = st.sampled_from(["id", "y", "x", "c", "", " id", "id ", '"id"', '"i,d"', '"unterminated', "\u00e9",
                              "1", "0", "nan", "NA", "x" * 300, "\x00", "\ufeffid", "a\"b", "\t"])
_separators = st.sampled_from([",", ",", ";", "\t", ",,"])
_newlines = st.sampled_from(["\n", "\r\n", "\r", "\n\n"])


@st.composite
def csv_files(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=120))
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        lines.append(draw(_separators).join(draw(st.lists(_csv_cells, max_size=5))))
    text = draw(_newlines).join(lines) + draw(st.sampled_from(["", "\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
    return text.encode(encoding, "replace")


@fuzz(400)
@given(csv_files(), st.sampled_from(["id", "y", "x", "missing"]),
       st.sampled_from([None, "y", "id"]), st.sampled_from([(), ("x",), ("c", "c"), ("id",)]))
def test_csv_header_checks_raise_only_data_error(scratch, data, id_column, label_column, text_columns):
    path = scratch / "table.csv"
    path.write_bytes(data)
    for call in (lambda: check_columns(path, id_column, label_column, list(text_columns)),
                 lambda: read_ids(path, id_column)):
        try:
            result = call()
        except DataError as exc:
            assert str(path) in str(exc)
            continue
        assert isinstance(result, (list, np.ndarray))
    with pytest.raises(DataError, match="not found"):
        check_columns(scratch / "missing.csv", id_column)


# ---------------------------------------------------------------------------- error types
def test_documented_error_types_are_related_as_documented():
    assert issubclass(FrameError, ProtocolError) and issubclass(MessageError, ValueError)
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
