import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vfl.io.tables import (MAX_ID_LENGTH, DataError, PartyTable, check_training_rows, iter_ids, load_table,
                            read_columns, read_ids)
from vfl.preprocess.split import Standardizer, batch_schedule, split_mask


def test_ids_are_text_and_duplicates_are_named(tmp_path):
    p = tmp_path / "a.csv"
    pd.DataFrame({"id": ["007", "7", "8"], "x": [1, 2, 3]}).to_csv(p, index=False)
    assert list(read_ids(p, "id")) == ["007", "7", "8"]
    pd.DataFrame({"id": ["1", "2", "1", "3", "3"], "x": range(5)}).to_csv(p, index=False)
    with pytest.raises(DataError, match="2 duplicate IDs, first: '1', '3'"):
        read_ids(p, "id")


@pytest.mark.parametrize("frame, kwargs, message", [
    (pd.DataFrame({"key": ["a"], "x": [1]}), {}, "ID column 'id' not found"),
    (pd.DataFrame({"id": ["a"], "x": [1]}), {"label_column": "y"}, "label column 'y' not found"),
    (pd.DataFrame({"id": ["a", "b", "c"], "x": [1, 2, 3], "y": [0, 1, 2]}), {"label_column": "y"},
     r"must hold 0/1, found \[0, 1, 2\] \(first other value 2 at data row 3\)"),
    (pd.DataFrame({"id": ["a", "b"], "x": ["u", "v"]}), {}, "non-numeric feature columns x"),
    (pd.DataFrame({"id": ["a", "b"], "x": [1.0, None]}), {}, "missing values in columns x"),
])
def test_bad_tables_are_refused_clearly(tmp_path, frame, kwargs, message):
    p = tmp_path / "t.csv"
    frame.to_csv(p, index=False)
    with pytest.raises(DataError, match=message):
        load_table(p, "id", **kwargs)


def test_split_is_order_independent_and_near_the_fraction():
    ids = np.array([f"u{i}" for i in range(20000)])
    m = split_mask(ids, seed=5, test_fraction=0.2)
    assert abs(m.mean() - 0.2) < 0.015
    perm = np.random.default_rng(0).permutation(len(ids))
    assert (split_mask(ids[perm], 5, 0.2) == m[perm]).all()
    assert (split_mask(ids, 6, 0.2) != m).any()


def test_batches_cover_every_row_once_and_differ_by_epoch():
    b0 = batch_schedule(1000, 300, seed=1, epoch=0)
    assert sorted(np.concatenate(b0).tolist()) == list(range(1000))
    assert [len(b) for b in b0] == [300, 300, 400]   # a tail of 100 < 150 is merged
    assert not np.array_equal(np.concatenate(b0), np.concatenate(batch_schedule(1000, 300, 1, 1)))


# --------------------------------------------------------------------------- IDs read verbatim

def _write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_na_like_ids_are_distinct_text_in_a_variable_width_array(tmp_path):
    words = ["NA", "null", "None", "N/A", "nan", "NULL", "#N/A", "007"]
    p = _write(tmp_path, "id,x\n" + "".join(f"{w},{i}\n" for i, w in enumerate(words)))
    for ids in (read_ids(p, "id"), load_table(p, "id").ids):
        assert ids.dtype == object and all(type(v) is str for v in ids)
        assert ids.tolist() == words
    long_id = "k" * MAX_ID_LENGTH
    p = _write(tmp_path, f"id,x\n{long_id},1\na,2\n")
    ids = read_ids(p, "id")
    assert ids.dtype == object and ids.tolist() == [long_id, "a"]


@pytest.mark.parametrize("text, message", [
    ("id,x\na,1\n,2\n", r"empty or blank ID in column 'id' at data row 2"),
    ("id,x\na,1\nb,2\n  ,3\n", r"empty or blank ID in column 'id' at data row 3"),
    ("x,id\n1,a\n2\n", r"empty or blank ID in column 'id' at data row 2"),      # short row
    (f"id,x\na,1\n{'z' * (MAX_ID_LENGTH + 1)},2\n",
     rf"ID of {MAX_ID_LENGTH + 1} characters in column 'id' at data row 2; IDs may have at most {MAX_ID_LENGTH}"),
])
def test_empty_and_overlong_ids_are_refused_with_file_and_row(tmp_path, text, message):
    p = _write(tmp_path, text)
    for read in (lambda: read_ids(p, "id"), lambda: load_table(p, "id")):
        with pytest.raises(DataError, match=message) as err:
            read()
        assert str(p) in str(err.value)


def test_missing_markers_still_mean_missing_in_numeric_and_label_columns(tmp_path):
    p = _write(tmp_path, "id,x,y\na,1,0\nb,NA,1\n")
    with pytest.raises(DataError, match=r"missing values in columns x \(first: column 'x', data row 2\)") as err:
        load_table(p, "id", "y")
    # and the ways out: binning scores missing values (load_table(..., allow_missing=True) is what it reads)
    assert str(err.value).endswith("; impute them, or train with [preprocess] binning, which gives missing values "
                                   "a bin of their own")
    assert np.isnan(load_table(p, "id", "y", allow_missing=True).features[1, 0])
    p = _write(tmp_path, "id,x,y\na,1,0\nb,2,null\n")
    with pytest.raises(DataError, match=r"label column 'y' has missing values \(first at data row 2\)"):
        load_table(p, "id", "y")


# --------------------------------------------------------------------------- finite features

@pytest.mark.parametrize("values, message", [
    (["1", "inf", "2"], r"column 'x' has non-finite value inf at data row 2"),
    (["1", "2", "-inf"], r"column 'x' has non-finite value -inf at data row 3"),
    (["1", "1e309"], r"column 'x' has non-finite value inf at data row 2"),
    (["1e308", "1e308", "1e308"], r"column 'x' value 1e\+308 at data row 1 is too large"),
    (["0", "1", "1e200"], r"column 'x' spread too wide to standardise over 3 rows: value 1e\+200 at data row 3"),
])
def test_features_that_would_overflow_standardising_are_refused(tmp_path, values, message):
    p = _write(tmp_path, "id,x\n" + "".join(f"r{i},{v}\n" for i, v in enumerate(values)))
    with pytest.raises(DataError, match=message) as err:
        load_table(p, "id")
    assert str(p) in str(err.value)


def test_accepted_extreme_columns_standardise_finitely_on_any_subset(tmp_path):
    n = 50
    big = np.finfo(np.float64).max
    spread = np.sqrt(big / n) / 4 * 0.999       # just inside both bounds of the check
    centre = 1e150
    x = np.where(np.arange(n) % 2 == 0, centre - spread, centre + spread)
    p = tmp_path / "t.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(n)], "x": x}).to_csv(p, index=False)
    t = load_table(p, "id")
    for rows in (slice(None), slice(0, 7), slice(1, None, 3)):
        with np.errstate(over="raise", invalid="raise"):
            std = Standardizer.fit(t.features[rows])
            assert np.isfinite(std.transform(t.features)).all()


# --------------------------------------------------------------------------- training rows

def test_check_training_rows(caplog):
    y = np.array([0, 1, 1, 0, 1], float)
    check_training_rows(y, 5, batch_size=4, n_columns=4, source="g")       # 5 rows >= 4 columns + 1
    check_training_rows(None, 2, batch_size=1, n_columns=0, source="h")    # a host, no labels
    with pytest.raises(DataError, match=r"g: only 5 aligned training rows for 5 columns; need at least 6"):
        check_training_rows(y, 5, batch_size=4, n_columns=5, source="g")
    with pytest.raises(DataError, match=r"h: only 1 aligned training rows for 0 columns; need at least 2 .*"
                                        r"whose ID every party holds, less the test rows: check that the parties' "
                                        r"IDs overlap$"):
        check_training_rows(None, 1, batch_size=1, n_columns=0, source="h")
    with pytest.raises(DataError, match=r"g: the 3 training rows have no label 0"):
        check_training_rows(np.ones(3), 3, batch_size=2, n_columns=1, source="g")
    with pytest.raises(DataError, match=r"no label 1"):
        check_training_rows(np.zeros(3), 3, batch_size=2, n_columns=1, source="g")
    with caplog.at_level(logging.WARNING, logger="vfl.io.tables"):
        check_training_rows(y, 5, batch_size=64, n_columns=1, source="g")
    assert "batch_size 64 exceeds the 5 training rows" in caplog.text


# --------------------------------------------------------------------------- categorical columns

def test_categorical_columns_are_verbatim_text_and_follow_take(tmp_path):
    p = _write(tmp_path, "id,x,city,y,seg\na,1,NA,0,01\nb,2,,1,null\nc,3,Paris,0\n")
    t = load_table(p, "id", "y", categorical_columns=["seg", "city"])
    assert t.columns == ["x"] and t.features.tolist() == [[1.0], [2.0], [3.0]]
    assert t.categorical_columns == ["seg", "city"]
    assert t.categorical.dtype == object and t.categorical.shape == (3, 2)
    assert t.categorical.tolist() == [["01", "NA"], ["null", ""], ["", "Paris"]]
    assert all(type(v) is str for v in t.categorical.ravel())
    s = t.take(np.array(["c", "a"], dtype=object))
    assert s.ids.tolist() == ["c", "a"] and s.labels.tolist() == [0.0, 0.0]
    assert s.categorical.tolist() == [["", "Paris"], ["01", "NA"]] and s.categorical_columns == ["seg", "city"]


def test_a_table_of_only_categorical_columns_and_plain_party_tables(tmp_path):
    p = _write(tmp_path, "id,y,c\na,0,u\nb,1,v\n")
    t = load_table(p, "id", "y", categorical_columns=("c",))
    assert t.features.shape == (2, 0) and t.columns == [] and t.categorical.tolist() == [["u"], ["v"]]
    with pytest.raises(DataError, match="no feature columns besides id, y"):
        load_table(_write(tmp_path, "id,y\na,0\n", "none.csv"), "id", "y")
    plain = PartyTable(np.array(["a", "b"], dtype=object), np.zeros((2, 1)), ["x"])
    assert plain.categorical.shape == (2, 0) and plain.categorical_columns == []
    assert plain.take(np.array(["b"])).categorical.shape == (1, 0)
    assert load_table(_write(tmp_path, "id,x\na,1\n", "n.csv"), "id").categorical.shape == (1, 0)


@pytest.mark.parametrize("cats, label, message", [
    (["town"], None, r"categorical column 'town' not found \(columns: id, x, c, y\)"),
    (["id"], None, r"categorical column 'id' is the ID column"),
    (["y"], "y", r"categorical column 'y' is the label column"),
    (["c", "c"], None, r"categorical column 'c' is named twice"),
])
def test_bad_categorical_column_names_are_refused(tmp_path, cats, label, message):
    p = _write(tmp_path, "id,x,c,y\na,1,u,0\nb,2,v,1\n")
    with pytest.raises(DataError, match=message) as err:
        load_table(p, "id", label, categorical_columns=cats)
    assert str(p) in str(err.value)


@pytest.mark.parametrize("name", ["t.csv", "t.parquet"])
def test_a_file_with_a_header_and_no_rows_says_so(tmp_path, name):
    p = tmp_path / name
    empty = pd.DataFrame({"id": pd.Series([], dtype=str), "age": pd.Series([], dtype=float),
                          "y": pd.Series([], dtype="int64")})
    empty.to_csv(p, index=False) if name.endswith(".csv") else empty.to_parquet(p, index=False)
    for read in (lambda: load_table(p, "id", "y"), lambda: load_table(p, "id"), lambda: read_ids(p, "id"),
                 lambda: list(iter_ids(p, "id"))):
        with pytest.raises(DataError) as err:
            read()
        assert str(err.value) == f"{p}: no data rows"


def test_a_csv_naming_a_column_twice_is_refused(tmp_path):
    p = _write(tmp_path, "id,x,z,x,z,w\na,1,2,3,4,5\n")
    for read in (lambda: read_columns(p), lambda: load_table(p, "id"), lambda: read_ids(p, "id")):
        with pytest.raises(DataError) as err:
            read()
        assert str(err.value) == f"{p}: duplicate column names 'x', 'z'"
    # names that only look like pandas' renaming are distinct, and kept as written
    p = _write(tmp_path, "id,x,x.1\na,1,2\nb,3,4\n")
    table = load_table(p, "id")
    assert table.columns == ["x", "x.1"] and table.features.tolist() == [[1, 2], [3, 4]]


# --------------------------------------------------------------------------- rows with more fields than the header

def _all_reads(p):
    return {"load_table": lambda: load_table(p, "id"),
            "load_table(allow_missing)": lambda: load_table(p, "id", allow_missing=True),
            "read_ids": lambda: read_ids(p, "id"),
            "iter_ids": lambda: [c.tolist() for c in iter_ids(p, "id", chunk_rows=2)]}


def test_rows_ending_in_an_extra_comma_are_refused_not_shifted(tmp_path):
    """Pandas takes the first field of such rows as the index: every column shifted one left,
    the second column read as the IDs."""
    p = _write(tmp_path, "id,age,income\nC001,31,5000,\nC002,45,7000,\nC003,52,6500,\n")
    for name, read in _all_reads(p).items():
        with pytest.raises(DataError) as err:
            read()
        assert str(err.value).startswith(f"{p}: data row 1 has 4 fields but the header has 3 "
                                         "(it ends with an extra comma)"), name


def test_a_later_row_with_an_extra_value_is_refused_naming_it(tmp_path):
    p = _write(tmp_path, 'id,x,c\na,1,u\n\nb,2,"v,w"\nc,3,u,9\nd,4,v\n')      # a blank line and a quoted comma: fine
    for name, read in _all_reads(p).items():
        with pytest.raises(DataError, match=r"data row 3 has 4 fields but the header has 3 \(extra values '9'\)") as err:
            read()
        assert str(p) in str(err.value), name


def test_lines_of_only_spaces_are_not_counted_as_rows_in_errors(tmp_path):
    """pandas skips a line of spaces or tabs; the field count check must not count it either, or its row
    numbers disagree with every other error's. A line of separators (" , ") is a row to both."""
    p = _write(tmp_path, "   \nid,x\n1,2\n   \n\t\n3,4,5\n")
    for name, read in _all_reads(p).items():
        with pytest.raises(DataError, match=r"data row 2 has 3 fields but the header has 2"):
            read()
    p = _write(tmp_path, "id,x\n1,2\n   \n ,4\n")          # the blank ID's row, as pandas counts it
    for name, read in _all_reads(p).items():
        with pytest.raises(DataError, match=r"empty or blank ID in column 'id' at data row 2"):
            read()
    p = _write(tmp_path, "id,x\n1,2\n , \n3,4,5\n")
    with pytest.raises(DataError, match=r"data row 3 has 3 fields"):
        read_ids(p, "id")


def test_ids_with_surrounding_spaces_or_another_unicode_form_are_kept_with_a_warning(tmp_path, caplog):
    """" C002" and a decomposed "José" match no other party's "C002" or "José" (IDs are exact text): kept as
    written, since they may be meant, but the party's log says so, once per file, with the first one."""
    import unicodedata
    nfd = unicodedata.normalize("NFD", "José")
    ids = ["C001", " C002", "C003\t", nfd, "王五", "C004"]
    p, clean = tmp_path / "t.csv", tmp_path / "clean.csv"
    p.write_text("x,id\n" + "".join(f"{i},{v}\n" for i, v in enumerate(ids)), encoding="utf-8")
    clean.write_text("id,x\nC001,1\nJosé,2\n王五,3\n", encoding="utf-8")

    def as_list(got):
        return (got.ids.tolist() if isinstance(got, PartyTable) else [v for c in got for v in c]
                if isinstance(got, list) else got.tolist())
    from vfl.io.tables import _OddIds
    for name, read in _all_reads(p).items():
        caplog.clear()
        _OddIds.warned.clear()                       # each way of reading warns on its own
        with caplog.at_level(logging.WARNING, logger="vfl.io.tables"):
            got = read()
        assert as_list(got) == ids, name                                     # unchanged
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1, (name, warned)
        assert warned[0] == (f"{p}: 3 ID(s) in column 'id' have leading or trailing whitespace or are not in "
                             "Unicode NFC form (first: ' C002'); IDs are matched exactly as text, so such an ID "
                             "matches only another party's ID written with the same characters"), name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vfl.io.tables"):     # read again (a job's baselines): once
        for read in _all_reads(p).values():
            read()
    assert not caplog.records
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vfl.io.tables"):
        load_table(clean, "id"), read_ids(clean, "id"), list(iter_ids(clean, "id"))
    assert not caplog.records


def test_quoted_commas_and_short_rows_are_still_read(tmp_path):
    p = _write(tmp_path, 'id,x,c\na,1,"u,v"\nb,2\n')
    t = load_table(p, "id", categorical_columns=["c"])
    assert t.ids.tolist() == ["a", "b"] and t.categorical.tolist() == [["u,v"], [""]]
    assert [c.tolist() for c in iter_ids(p, "id")] == [["a", "b"]]


# --------------------------------------------------------------------------- atomic result files

def test_two_writers_of_one_file_each_use_their_own_temporary(tmp_path, monkeypatch):
    """A second writer replacing the file while the first is about to: with one shared
    ``<name>.tmp`` the first's rename finds its temporary gone (FileNotFoundError)."""
    from vfl.io import files
    path = tmp_path / "predict_metrics.json"
    real_replace, sources = os.replace, []

    def replace(src, dst):
        sources.append(Path(src).name)
        if len(sources) == 1:                      # the other writer runs to its end right here
            files.write_json(path, {"writer": 2})
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    files.write_json(path, {"writer": 1})
    assert json.loads(path.read_text()) == {"writer": 1}           # the last rename wins, whole
    assert len(set(sources)) == 2 and all(s.startswith(".predict_metrics.json.") for s in sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predict_metrics.json"]


def test_an_atomic_write_is_fsynced_and_a_failed_one_leaves_the_old_file(tmp_path, monkeypatch):
    from vfl.io import files
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "m.json"
    files.write_json(path, {"a": 1})
    assert synced and json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with files.atomic_open(path, "w") as f:
            f.write('{"half')
            raise RuntimeError("crash while writing")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]           # no temporary left behind
    assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())        # as a plain open() would create it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_result_csvs_are_written_atomically_with_unchanged_bytes(tmp_path, monkeypatch):
    from vfl.io.files import write_csv_atomically
    from vfl.preprocess.scorecard import write_scorecard
    from vfl.psi import write_intersection
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst).name), real_replace(src, dst)))
    frame = pd.DataFrame({"id": ["007", "NA", "=1+2"], "score": [0.125, 0.5, 1 / 3], "points": [601.2, 580.0, 0.1]})
    write_csv_atomically(frame, tmp_path / "scores.csv", index=False)
    frame.to_csv(tmp_path / "direct.csv", index=False)
    assert (tmp_path / "scores.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()
    write_intersection(tmp_path / "intersection.csv", np.array(["007", "NA"], dtype=object))
    assert (tmp_path / "intersection.csv").read_bytes() == b"id\r\n007\r\nNA\r\n"
    rows = [{"column": "x", "bin": "(-inf, 1]", "rows": 3, "events": None, "woe": 0.5, "points": 12.25}]
    write_scorecard(tmp_path, {"guest": rows}, "guest")
    assert (tmp_path / "scorecard.csv").read_bytes() == (b"column,bin,rows,events,woe,points\r\n"
                                                         b"x,\"(-inf, 1]\",3,,0.5,12.25\r\n")
    assert renamed == ["scores.csv", "intersection.csv", "scorecard.json", "scorecard.csv"]


def test_every_result_csv_goes_through_the_atomic_writers():
    """``DataFrame.to_csv(path)`` and ``open(path, "w")`` write in place: a crash leaves half a file.
    Only the API's copy of a user's input DataFrame and the synthetic demo data may."""
    root = Path(__file__).resolve().parents[1] / "vfl"
    direct = []
    for f in sorted(root.rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\.to_csv\(|\.open\(\s*\"w|csv\.writer\(", line):
                direct.append(f"{f.relative_to(root)}:{n}")
    assert [d for d in direct if not d.startswith(("api.py:", "io/synth.py:", "io/files.py:"))] == []


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_utf16_or_utf32_csv_is_read_by_its_byte_order_mark(tmp_path, encoding, name):
    """Windows tools (PowerShell, ``to_csv(encoding="utf-16")``) write UTF-16 or UTF-32 with a byte-order
    mark: it is read as that (it was refused, and the advice for undecodable bytes had been "probably
    GBK"). A declared GBK or GB 18030 that the mark contradicts is refused; a tab-separated file (Excel's
    "Unicode Text") is named as such, not reported as lacking its ID column."""
    p = tmp_path / "t.csv"
    text = "id,x,城市\na,1,北京\nb,2,上海\n"
    p.write_bytes((b"\xfe\xff" + text.encode("utf-16-be")) if encoding == "utf-16-be" else text.encode(encoding))
    t = load_table(p, "id", categorical_columns=["城市"])
    assert list(t.ids) == ["a", "b"] and t.features.ravel().tolist() == [1.0, 2.0]
    assert t.columns == ["x"] and t.categorical.ravel().tolist() == ["北京", "上海"]
    assert [list(c) for c in iter_ids(p, "id")] == [["a", "b"]]
    for declared in ("gbk", "gb18030"):
        with pytest.raises(DataError, match=rf"t\.csv: the job file says encoding = '{declared}', but the file is "
                                            rf"{name} text \(it starts with a {name} byte-order mark\)"):
            load_table(p, "id", encoding=declared)
    p.write_bytes("id\tx\na\t1\n".encode(encoding if encoding != "utf-16-be" else "utf-16"))
    with pytest.raises(DataError, match=r"t\.csv: the file is tab-separated .* save it as CSV"):
        load_table(p, "id")


def test_a_relative_sqlite_store_is_the_job_files_and_is_never_created(tmp_path, monkeypatch):
    """`store = "sqlite:///feat.db"` resolved against the current directory (every other path of a job file,
    against the file's folder), and a wrong path served from a new, empty database."""
    sa = pytest.importorskip("sqlalchemy")
    from vfl.job.config import parse_job
    from vfl.serving.stores import SqlStore, StoreError
    (tmp_path / "jobs").mkdir()
    monkeypatch.chdir(tmp_path)                     # elsewhere than the job file's folder
    raw = {"arbiter": {"address": "127.0.0.1:9100"},
           "guest": {"name": "bank", "address": "127.0.0.1:9101", "data": "bank.csv"},
           "hosts": [{"name": "shop", "address": "127.0.0.1:9102", "data": "shop.csv", "store": "sqlite:///feat.db"},
                     {"name": "mall", "address": "127.0.0.1:9103", "data": "mall.csv",
                      "store": f"sqlite:///{tmp_path}/abs.db"}]}
    job = parse_job(raw, tmp_path / "jobs" / "job.toml")
    assert job.hosts[0].store == f"sqlite:///{tmp_path}/jobs/feat.db"
    assert job.hosts[1].store == f"sqlite:///{tmp_path}/abs.db"
    with pytest.raises(StoreError) as refused:
        SqlStore(job.hosts[0].store, "shop", "id")
    message = str(refused.value)
    assert re.fullmatch(rf"cannot open store sqlite:///{tmp_path}/jobs/feat\.db: no such SQLite database \(.*\): "
                        rf"{tmp_path}/jobs/feat\.db", message), message
    assert not (tmp_path / "jobs" / "feat.db").exists() and not (tmp_path / "feat.db").exists()
    # an existing database is read (read-only); a file that is no database is one line, without SQLAlchemy's link
    pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0]}).to_sql("shop", sa.create_engine(job.hosts[0].store), index=False)
    store = SqlStore(job.hosts[0].store, "shop", "id")
    assert store.lookup(["b"]).table.features.tolist() == [[2.0]]
    with pytest.raises(sa.exc.OperationalError, match="readonly"):
        with store._engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM shop"))
    (tmp_path / "abs.db").write_text("not a database\n" * 100)
    with pytest.raises(StoreError) as refused:
        SqlStore(job.hosts[1].store, "mall", "id")
    assert "\n" not in str(refused.value) and "Background" not in str(refused.value)
    assert "DatabaseError" in str(refused.value)


def test_a_ledger_that_is_not_text_is_named_with_its_line(tmp_path):
    """`vfl audit` on a binary ledger printed only "'utf-8' codec can't decode byte ...", naming no file."""
    from vfl.protocol.audit import read_ledger
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"\x8a\x93\xff binary\n\x00\x01\n")
    led = read_ledger(path, "bank", {"bank": "guest", "shop": "host", "arbiter": "arbiter"})
    assert led.problems == [f"{path}:1: not a ledger line ('utf-8' codec can't decode byte 0x8a in position 0: "
                            "invalid start byte)"]
