"""Data as a Chinese bank or platform has it: Chinese column names and IDs, a host file in GBK.

One small binned scorecard job (Chinese IDs, a categorical column of Chinese
city names) runs twice: once with Chinese column names, the host's training
and scoring files saved in GBK (as Excel writes them on a Chinese Windows)
with ``encoding = "gbk"``; once as its twin with ASCII column names and every
file in UTF-8. Both must give the same model and scores (IDs set the
train/test split, so the twins share them), and
the reports must show the Chinese names, built without a single
"Glyph ... missing from font" warning (whether or not a CJK font is installed).
"""
from __future__ import annotations

from dataclasses import replace

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from parties.party import preflight
from tests.conftest import write_job
from vfl.job.jobfile import dumps, raw_of
from vfl.evaluation import page
from vfl.io.tables import DataError, load_table
from vfl.io.synth import vertical_split
from vfl.job.config import ConfigError, load_job
from vfl.job.threads import run_local, run_predict_local

GUEST = {"id": "客户编号", "y": "是否违约", "g0": "月收入", "g1": "负债率"}
HOST = {"id": "客户编号", "h0_0": "月消费额", "h0_1": "订单数", "城市": "常住城市"}
CITIES = np.array(["北京", "上海", "广州", "深圳", "成都"], dtype=object)


def _frames():
    guest, (host,) = vertical_split(500, 2, [2], overlap=0.9, seed=11)
    rng = np.random.default_rng(12)
    host["城市"] = CITIES[rng.choice(len(CITIES), size=len(host))]
    guest["id"] = [f"客户{i}" for i in guest["id"]]
    host["id"] = [f"客户{i}" for i in host["id"]]
    return guest, host


def _write_job(folder, chinese: bool):
    """The job in ``folder``: Chinese column names and a GBK host, or the twin (ASCII names, UTF-8)."""
    folder.mkdir()
    guest, host = _frames()
    if chinese:
        guest, host = guest.rename(columns=GUEST), host.rename(columns=HOST)
    else:
        host = host.rename(columns={"城市": "city"})
    enc = "gbk" if chinese else "utf-8"
    guest.iloc[:400].to_csv(folder / "g.csv", index=False)
    guest.iloc[400:].drop(columns=guest.columns[1]).to_csv(folder / "g_new.csv", index=False)
    host.to_csv(folder / "h.csv", index=False, encoding=enc)
    host.iloc[::2].to_csv(folder / "h_new.csv", index=False, encoding=enc)
    ids = {"id_column": GUEST["id"]} if chinese else {}
    return write_job(folder, folder / "g.csv", [folder / "h.csv"], label=GUEST["y"] if chinese else "y",
                     model={"epochs": 3, "batch_size": 128}, preprocess={"bins": 4},
                     guest_keys={**ids, "predict_data": folder / "g_new.csv"},
                     host_keys={"host0": {**ids, "encoding": enc, "predict_data": folder / "h_new.csv",
                                          "categorical_columns": [HOST["城市"] if chinese else "city"]}})


def _outcome(job) -> dict:
    g, h = (json.loads((job.output_dir(n) / "model.json").read_text()) for n in ("guest", "host0"))
    pred = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    scores = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    return {"weights": np.concatenate([g["coef"], h["coef"], [g["intercept"]]]),
            "pred": pred, "scores": scores}


@pytest.fixture(scope="module", params=["cjk-font", "browser-text"])
def runs(request, tmp_path_factory):
    """Both jobs run (train, then score predict_data); warnings recorded throughout. ``browser-text``:
    as on a machine without a CJK font; ``cjk-font``: with the one installed here (skipped if none)."""
    if request.param == "cjk-font" and page.cjk_font() is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk)")
    tmp = tmp_path_factory.mktemp(request.param)
    saved = page.cjk_font
    if request.param == "browser-text":
        page.cjk_font = lambda: None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = {}
            for chinese in (True, False):
                job = load_job(_write_job(tmp / ("zh" if chinese else "en"), chinese))
                run_local(job)
                run_predict_local(job)
                out["zh" if chinese else "en"] = job, _outcome(job)
    finally:
        page.cjk_font = saved
    return out, caught


def test_gbk_host_and_chinese_names_give_the_ascii_twins_model(runs):
    (zh, a), (_, b) = runs[0]["zh"], runs[0]["en"]
    assert zh.hosts[0].encoding == "gbk" and zh.guest.encoding == "utf-8"
    np.testing.assert_array_equal(a["weights"], b["weights"])
    assert np.abs(a["weights"]).max() > 1e-3                           # it trained
    for kind in ("pred", "scores"):
        assert (a[kind]["id"] == b[kind]["id"]).all() and a[kind]["id"].str.startswith("客户").all()
        np.testing.assert_array_equal(a[kind]["score"].to_numpy(), b[kind]["score"].to_numpy())
    guest, host = _frames()
    assert len(a["scores"]) == len(set(guest["id"][400:]) & set(host["id"][::2])) > 20   # the new rows both have


def test_reports_show_the_chinese_names_without_glyph_warnings(runs):
    (zh, _), _ = runs[0]["zh"], runs[0]["en"]
    glyph = [str(w.message) for w in runs[1] if "Glyph" in str(w.message)]
    assert glyph == []
    guest_page = (zh.workdir / "report.html").read_text(encoding="utf-8")
    host_page = (zh.output_dir("host0") / "report.html").read_text(encoding="utf-8")
    for name in ("月收入", "负债率"):
        assert name in guest_page and name not in host_page
    for name in ("月消费额", "订单数", "常住城市", "北京", "深圳"):
        assert name in host_page and name not in guest_page
    # the host's column PSI chart labels its rows with the Chinese names, as SVG text the browser draws
    chart = host_page[host_page.index('id="chart-column-psi"'):]
    chart = chart[:chart.index("</figure>")]
    assert "月消费额" in chart and "常住城市 (cat.)" in chart


def test_a_gbk_file_read_as_utf8_says_to_set_the_encoding(tmp_path):
    path = tmp_path / "h.csv"
    pd.DataFrame({"客户编号": ["客户1", "客户2"], "月消费额": [1.0, 2.0]}).to_csv(path, index=False, encoding="gbk")
    with pytest.raises(DataError, match=r"h\.csv: not UTF-8 text .*'utf-8' codec can't decode.*"
                                        r'add encoding = "gbk" to this party\'s table'):
        load_table(path, "客户编号")
    table = load_table(path, "客户编号", encoding="gbk")
    assert table.ids.tolist() == ["客户1", "客户2"] and table.columns == ["月消费额"]
    # a party checks its own file before it opens the network: the same advice, before any work
    job = load_job(_write_job(tmp_path / "job", chinese=True))
    job = replace(job, hosts=(replace(job.hosts[0], encoding="utf-8"),))
    with pytest.raises(DataError, match='add encoding = "gbk"'):
        preflight(job, "host0")


def test_a_utf8_file_declared_gbk_is_refused_not_misread(tmp_path):
    """UTF-8 bytes decode as GBK without an error, into other characters: that must not pass."""
    frame = pd.DataFrame({"客户编号": ["客户1", "客户2"], "月消费额": [1.0, 2.0]})
    for name, enc in (("utf8.csv", "utf-8"), ("bom.csv", "utf-8-sig")):
        frame.to_csv(tmp_path / name, index=False, encoding=enc)
        assert load_table(tmp_path / name, "客户编号").ids.tolist() == ["客户1", "客户2"]   # the default reads both
        with pytest.raises(DataError, match=rf"{name}: the job file says encoding = 'gbk', but the file is UTF-8"):
            load_table(tmp_path / name, "客户编号", encoding="gbk")
    pd.DataFrame({"id": ["a1"], "x": [1.0]}).to_csv(tmp_path / "ascii.csv", index=False)   # ASCII: any of the three
    assert load_table(tmp_path / "ascii.csv", "id", encoding="gb18030").ids.tolist() == ["a1"]


@pytest.mark.parametrize("value, ok", [("GBK", "gbk"), ("gb18030", "gb18030"), ("UTF8", "utf-8"), ("cp936", "gbk"),
                                       ("latin-1", None), ("big5", None), ("no-such-codec", None), (936, None)])
def test_the_encoding_key_accepts_utf8_gbk_and_gb18030_only(tmp_path, value, ok):
    good = load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"]))
    path = tmp_path / "bad.toml"
    raw = raw_of(good)
    raw["hosts"][0]["encoding"] = value
    path.write_text(dumps(raw))
    if ok:
        assert load_job(path).hosts[0].encoding == ok
    else:
        with pytest.raises(ConfigError, match=r"\[hosts\.0\] encoding must be one of 'utf-8', 'gbk', 'gb18030'"):
            load_job(path)
    raw = raw_of(good)
    raw["arbiter"]["encoding"] = "gbk"
    path.write_text(dumps(raw))
    with pytest.raises(ConfigError, match=r"\[arbiter\] has no data, so no encoding"):
        load_job(path)


@pytest.mark.parametrize("encoding", ["gb18030", "gbk"])
def test_a_utf8_file_declared_gbk_is_refused_even_when_its_chinese_starts_late(tmp_path, encoding):
    """GB 18030 decodes any bytes: the whole file is checked, not only its first 64 KiB."""
    rows = ["id,x,city"] + [f"C{i:05d},{i % 7},beijing" for i in range(4000)]
    late = tmp_path / "late.csv"
    late.write_text("\n".join(rows + ["C99998,1,浙江", "C99999,2,中文"]) + "\n", encoding="utf-8")
    assert late.stat().st_size > 1 << 16 and late.read_bytes()[: 1 << 16].isascii()
    with pytest.raises(DataError, match=rf"late\.csv: the job file says encoding = '{encoding}', but the file is UTF-8"):
        load_table(late, "id", categorical_columns=["city"], encoding=encoding)
    real = tmp_path / "real.csv"                     # the same file really in GBK: read as written
    real.write_text("\n".join(rows + ["C99998,1,浙江", "C99999,2,中文"]) + "\n", encoding=encoding)
    table = load_table(real, "id", categorical_columns=["city"], encoding=encoding)
    assert table.categorical[-2:].ravel().tolist() == ["浙江", "中文"]


def test_a_cohort_folder_keeps_a_chinese_file_name(tmp_path):
    """A cohort's folder is named after the scored file: Chinese (or any script's) letters are kept,
    only characters a folder name cannot safely hold become ``_``, and nothing escapes ``cohorts``."""
    from datetime import datetime, timezone
    from vfl.evaluation.collect import new_cohort_dir
    now = datetime(2026, 12, 6, tzinfo=timezone.utc)
    assert new_cohort_dir(tmp_path, tmp_path / "十二月 申请人.csv", now).name == "20261206T000000Z-十二月_申请人"
    odd = new_cohort_dir(tmp_path, tmp_path / "a/../..csv", now)
    assert odd.parent == tmp_path / "cohorts" and odd.name == "20261206T000000Z-cohort"
