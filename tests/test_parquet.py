"""Parquet input: chosen by extension, read with pyarrow, with the same semantics and errors as CSV."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vfl.io.tables
from tests.conftest import write_job, write_tables
from vfl.job.config import load_job
from vfl.io.tables import DataError, check_columns, is_parquet, load_table, read_columns, read_ids
from vfl.job.threads import run_local
from vfl.io.synth import vertical_split

_TIMINGS = {"epoch_seconds", "stage_seconds", "phase_seconds"}


def _untimed(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in _TIMINGS}


def test_suffixes():
    assert is_parquet("a/b.parquet") and is_parquet("b.PQ") and is_parquet("x.csv.parquet")
    assert not is_parquet("b.csv") and not is_parquet("parquet") and not is_parquet("b.parquet.csv")


def test_same_job_on_parquet_and_on_csv_gives_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setattr(vfl.io.tables, "_BATCH_ROWS", 64)          # several record batches per file
    guest, hosts = vertical_split(600, 3, [2, 2], overlap=0.85, seed=4)
    (tmp_path / "csv").mkdir()
    (tmp_path / "pq").mkdir()
    g_csv, h_csvs = write_tables(tmp_path / "csv", guest, hosts)
    # The guest stores its IDs as integers (read back as their decimal text), the hosts as strings.
    g_pq = tmp_path / "pq" / "g.parquet"
    pq.write_table(pa.Table.from_pandas(guest.assign(id=guest["id"].astype(np.int64)), preserve_index=False),
                   g_pq, row_group_size=100)
    h_pqs = [tmp_path / "pq" / "h0.parquet", tmp_path / "pq" / "h1.pq"]
    for h, p in zip(hosts, h_pqs):
        h.to_parquet(p, index=False)
    model = {"epochs": 3, "batch_size": 128, "learning_rate": 0.1, "tolerance": 0.0, "label_dp": "off"}  # no noise
    job_csv = load_job(write_job(tmp_path / "csv", g_csv, h_csvs, model=model))
    job_pq = load_job(write_job(tmp_path / "pq", g_pq, h_pqs, model=model))
    r_csv, r_pq = run_local(job_csv), run_local(job_pq)

    assert r_pq["guest"]["aligned_rows"] > 300
    assert _untimed(r_pq["guest"]) == _untimed(r_csv["guest"])
    for name in ("host0", "host1"):
        assert _untimed(r_pq[name]) == _untimed(r_csv[name])
    for name in ("guest", "host0", "host1"):
        part_csv = json.loads((job_csv.output_dir(name) / "model.json").read_text())
        part_pq = json.loads((job_pq.output_dir(name) / "model.json").read_text())
        assert part_pq.pop("model_id") != part_csv.pop("model_id")     # each training has its own identity
        assert part_pq == part_csv                             # weights, intercept, standardiser: equal
        assert ((job_pq.output_dir(name) / "intersection.csv").read_text()
                == (job_csv.output_dir(name) / "intersection.csv").read_text())
    assert (pd.read_csv(job_pq.output_dir("guest") / "predictions.csv", dtype={"id": str})
            .equals(pd.read_csv(job_csv.output_dir("guest") / "predictions.csv", dtype={"id": str})))


def test_tables_read_the_same_from_parquet_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(vfl.io.tables, "_BATCH_ROWS", 3)
    frame = pd.DataFrame({
        "id": ["007", "7", "NA", "null", "x y", "k" * vfl.io.tables.MAX_ID_LENGTH, "8"],
        "age": [31, 45, 22, 60, 38, 51, 29],
        "city": ["Oslo", None, "", "NA", "Rome", "Oslo", "Lima"],
        "income": [1.5, 2.25, -3.0, 4e10, 0.0, 1e-9, 7.0],
        "y": [0, 1, 0, 1, 1, 0, 1],
    })
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    a = load_table(tmp_path / "t.csv", "id", "y", ["city"])
    b = load_table(tmp_path / "t.parquet", "id", "y", ["city"])
    assert b.ids.dtype == object and all(type(v) is str for v in b.ids)
    assert b.ids.tolist() == a.ids.tolist() == frame["id"].tolist()
    assert b.columns == a.columns == ["age", "income"]
    np.testing.assert_array_equal(b.features, a.features)
    np.testing.assert_array_equal(b.labels, a.labels)
    assert b.categorical.tolist() == a.categorical.tolist()
    assert b.categorical[:, 0].tolist() == ["Oslo", "", "", "NA", "Rome", "Oslo", "Lima"]   # null -> ""
    assert read_ids(tmp_path / "t.parquet", "id").tolist() == frame["id"].tolist()
    assert read_columns(tmp_path / "t.parquet") == list(frame.columns)
    assert check_columns(tmp_path / "t.parquet", "id", "y", ["city"]) == list(frame.columns)


def test_typed_parquet_columns_become_text_and_numbers(tmp_path):
    p = tmp_path / "t.pq"
    pq.write_table(pa.table({
        "id": pa.array([7, -3, 10_000_000_000_000_000], pa.int64()),
        "shop": pa.array([12, None, 3], pa.uint16()),                        # categorical integers
        "tier": pa.array(["gold", None, "gold"]).dictionary_encode(),
        "member": pa.array([True, False, None]),
        "n": pa.array([1, 2, 3], pa.int8()),
        "flag": pa.array([True, False, True]),
        "y": pa.array([False, True, True]),
    }), p)
    assert read_ids(p, "id").tolist() == ["7", "-3", "10000000000000000"]
    t = load_table(p, "id", "y", ["shop", "tier", "member"])
    assert t.categorical.tolist() == [["12", "gold", "True"], ["", "", "False"], ["3", "gold", ""]]
    assert t.columns == ["n", "flag"]
    np.testing.assert_array_equal(t.features, [[1, 1], [2, 0], [3, 1]])
    np.testing.assert_array_equal(t.labels, [0, 1, 1])


def test_read_ids_reads_only_the_id_column(tmp_path, monkeypatch):
    p = tmp_path / "t.parquet"
    pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0], "note": ["free", "text"]}).to_parquet(p, index=False)
    seen = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert read_ids(p, "id").tolist() == ["a", "b"]          # the text column "note" is never read
    assert seen == [["id"]]


def _pq(tmp_path, table, name="bad.parquet"):
    p = tmp_path / name
    pq.write_table(table, p, row_group_size=2)
    return p


@pytest.mark.parametrize("table, kwargs, message", [
    (pa.table({"key": ["a", "b"], "x": [1.0, 2.0]}), {}, r"ID column 'id' not found \(columns: key, x\)"),
    (pa.table({"id": ["a", "b", "c", None], "x": [1.0, 2.0, 3.0, 4.0]}), {},
     r"missing \(null\) ID in column 'id' at data row 4"),
    (pa.table({"id": pa.array([1, None], pa.int64()), "x": [1.0, 2.0]}), {},
     r"missing \(null\) ID in column 'id' at data row 2"),
    (pa.table({"id": ["a", "", "c"], "x": [1.0, 2.0, 3.0]}), {}, r"empty or blank ID in column 'id' at data row 2"),
    (pa.table({"id": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]}), {}, r"1 duplicate IDs, first: 'a'"),
    (pa.table({"id": [1.0, 2.0], "x": [1.0, 2.0]}), {}, r"ID column 'id' has Parquet type double"),
    (pa.table({"id": ["a", "b", "c"], "x": [1.0, 2.0, float("inf")]}), {},
     r"column 'x' has non-finite value inf at data row 3"),
    (pa.table({"id": ["a", "b", "c"], "x": [1.0, float("nan"), 2.0]}), {},
     r"missing values in columns x \(first: column 'x', data row 2\)"),
    (pa.table({"id": ["a", "b", "c"], "x": pa.array([1.0, 2.0, None])}), {},
     r"missing values in columns x \(first: column 'x', data row 3\)"),
    (pa.table({"id": ["a", "b"], "x": ["1", "2"]}), {}, r"non-numeric feature columns x \(Parquet type string\)"),
    (pa.table({"id": ["a", "b"], "x": [1.0, 2.0], "y": [0, 2]}), {"label_column": "y"},
     r"label column 'y' must hold 0/1, found \[0, 2\]"),
    (pa.table({"id": ["a", "b"], "x": [1.0, 2.0], "y": pa.array([0, None], pa.int8())}), {"label_column": "y"},
     r"label column 'y' has missing values \(first at data row 2\)"),
    (pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), {"label_column": "y"}, r"label column 'y' not found"),
    (pa.table({"id": ["a", "b"], "c": [1.5, 2.5]}), {"categorical_columns": ["c"]},
     r"categorical column 'c' has Parquet type double"),
])
def test_bad_parquet_tables_name_file_column_and_row(tmp_path, table, kwargs, message):
    p = _pq(tmp_path, table)
    with pytest.raises(DataError, match=message) as err:
        load_table(p, "id", **kwargs)
    assert str(err.value).startswith(str(p))


def test_id_errors_also_come_from_read_ids_and_the_header_check(tmp_path):
    p = _pq(tmp_path, pa.table({"key": ["a"], "x": [1.0]}))
    for call in (lambda: read_ids(p, "id"), lambda: check_columns(p, "id")):
        with pytest.raises(DataError, match=f"{p}: ID column 'id' not found"):
            call()
    p = _pq(tmp_path, pa.table({"id": ["a", "b", "c", None, "e"], "x": [1.0] * 5}), "null.pq")
    with pytest.raises(DataError, match=f"{p}: missing \\(null\\) ID in column 'id' at data row 4"):
        read_ids(p, "id")


def test_null_id_row_counts_across_record_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(vfl.io.tables, "_BATCH_ROWS", 50)
    ids = [f"u{i}" for i in range(200)]
    ids[129] = None
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ids, "x": np.arange(200.0)}), p, row_group_size=64)
    with pytest.raises(DataError, match="at data row 130$"):
        read_ids(p, "id")


def test_unreadable_parquet_files_are_data_errors(tmp_path):
    p = tmp_path / "t.parquet"
    p.write_text("id,x\na,1\n")                                # a CSV with a Parquet name
    for call in (lambda: read_ids(p, "id"), lambda: load_table(p, "id"), lambda: read_columns(p)):
        with pytest.raises(DataError, match=f"{p}: not a readable Parquet file"):
            call()
    good = _pq(tmp_path, pa.table({"id": [f"u{i}" for i in range(50)], "x": np.arange(50.0)}), "good.pq")
    raw = good.read_bytes()
    cut = tmp_path / "cut.pq"
    cut.write_bytes(raw[: len(raw) // 2] + raw[-8:])           # truncated, with the footer magic kept
    with pytest.raises(DataError, match=f"{cut}: not a readable Parquet file"):
        load_table(cut, "id")
    with pytest.raises(DataError, match="data file .*nowhere.parquet not found"):
        read_ids(tmp_path / "nowhere.parquet", "id")
    with pytest.raises(DataError, match="not found"):
        check_columns(tmp_path / "nowhere.pq", "id")


def test_bad_parquet_fails_the_job_naming_the_party(tmp_path):
    from vfl.job.threads import JobFailed
    guest, (host,) = vertical_split(200, 2, [2], seed=1)
    write_tables(tmp_path, guest, [])
    h = host.copy()
    h.loc[5, "h0_1"] = np.inf
    h.to_parquet(tmp_path / "h.parquet", index=False)
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.parquet"]))
    with pytest.raises(JobFailed, match=r"party 'host0' failed: DataError: .*h\.parquet: column 'h0_1' "
                                        r"has non-finite value inf at data row 6"):
        run_local(job)
