"""The parts every report page is built from: number formats, tables whose cells name the saved
figure they show, inline SVG charts and the page shell.

A cell shown from a saved file carries ``data-metric``: its JSON path, the file first (for
example ``["metrics", "evaluation", "test", "auc"]``), so that a test can check every figure
on a page against the files it was built from. Charts are matplotlib SVG with text kept as
text; styles are inline and there is no script, so a page opens offline and can be archived.

Column and party names may be Chinese. Matplotlib lays a chart out with the fonts it has, and
DejaVu Sans has no CJK glyphs: it would warn once per character and measure labels with its
"missing glyph" box. So a CJK-capable font (:func:`cjk_font`) backs DejaVu Sans up when one is
installed; when none is, :func:`svg` lays the chart out with stand-ins of the same width (an
em dash per full-width character) and puts the real text back into the SVG, where the browser
draws it with its own fonts. Either way the SVG holds the text itself, never glyph outlines.
"""
from __future__ import annotations

import functools
import html
import io
import json
import math
import re
import unicodedata
from pathlib import Path

from . import stability

COLORS = {"train": "#1f5fa8", "test": "#e07b00"}
COHORT_COLORS = ["#2a9d3f", "#8e44ad", "#8c564b", "#d6278f", "#17a2b8", "#6c757d"]
CLASS_COLORS = {"goods": "#5b8fc9", "bads": "#c8443f"}
FLAG_COLORS = {"watch": "#b08600", "act": "#c8443f"}


def color(name: str, cohorts: list[str] | None = None) -> str:
    """Train blue, test orange, cohorts from a palette in the order given."""
    if name in COLORS:
        return COLORS[name]
    idx = (cohorts or []).index(name) if name in (cohorts or []) else 0
    return COHORT_COLORS[idx % len(COHORT_COLORS)]


# ---------------------------------------------------------------- formatting

_FORMATS = {"pct": "{:.1%}", "p3": "{:.3f}", "p4": "{:.4f}", "lift": "{:.2f}", "points": "{:.0f}",
            "pts": "{:.1f}",      # scorecard points and scaling: one decimal
            "woe": "{:+.3f}", "sec": "{:.1f}", "coef": "{:+.4f}"}


def fmt(value, kind: str = "num") -> str:
    """How a number is shown: rates as percentages, AUC/KS/PSI/IV to 3 places, counts with separators."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "text":
        return str(value)
    if kind == "count":
        return f"{int(value):,}"
    if kind in _FORMATS:
        return _FORMATS[kind].format(value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def table(rows: list[dict], cols: list[tuple[str, str, str]], source: list | None = None,
          caption: str | None = None, cls: str = "") -> str:
    """An HTML table; ``cols`` are ``(key, heading, kind)``. Row ``i`` of a table with ``source`` shows
    ``source + [i, key]``; otherwise a row names its cells' paths in ``_paths`` (key -> path) or a base
    in ``_base`` (``_base + [key]``, non-text columns only). A row's ``_flags`` (key -> PSI flag)
    colours a cell and adds the flag's word; a ``flag`` column is coloured by its own value; ``_cls``
    is the row's class (``group``: the first row of a group, ruled above)."""
    head = "".join(f'<th{" class=t" if kind in ("text", "bool") else ""}>{esc(h)}</th>' for _, h, kind in cols)
    body = []
    for i, r in enumerate(rows):
        base = source + [i] if source is not None else r.get("_base")
        cells = []
        for key, _, kind in cols:
            v = r.get(key)
            path = (r.get("_paths") or {}).get(key)
            if path is None and base is not None and kind != "text":
                path = base + [key]
            attrs = ' class="t"' if kind in ("text", "bool") else ""
            flag = (r.get("_flags") or {}).get(key) or (v if key == "flag" else None)
            suffix = ""
            if flag in ("watch", "act"):
                attrs = f' class="{"t " if kind == "text" else ""}flag-{flag}"'
                if key != "flag":
                    suffix = f' <span class="fl">{flag}</span>'
            if path is not None:
                attrs += f' data-metric="{esc(json.dumps(path))}"'
            cells.append(f'<td{attrs} data-key="{esc(key)}">{esc(fmt(v, kind))}{suffix}</td>')
        tr = f'<tr class="{esc(r["_cls"])}">' if r.get("_cls") else "<tr>"
        body.append(tr + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STAGES = {"psi": "PSI (aligning IDs)", "binning": "binning, WOE and IV", "train": "training",
          "predict": "scoring the aligned rows"}


def stage_rows(root: list, stage_seconds: dict | None, phase_seconds: dict | None) -> list[dict]:
    """Rows of a stage-times table: whole stages, then the training protocol's phases."""
    rows = [{"stage": STAGES.get(k, k), "seconds": v, "_paths": {"seconds": root + ["stage_seconds", k]}}
            for k, v in (stage_seconds or {}).items()]
    rows += [{"stage": f"training: {k.replace('_', ' ')}", "seconds": v,
              "_paths": {"seconds": root + ["phase_seconds", k]}} for k, v in (phase_seconds or {}).items()]
    return rows


def preprocess_settings(job) -> list[tuple[str, str]]:
    """The job's ``[preprocess]`` settings as (setting, value) rows (none without binning)."""
    p = getattr(job, "preprocess", None)
    if p is None:
        return []
    sel = [f"IV ≥ {p.iv_threshold:g}"] if p.iv_threshold else []
    sel += [f"top {p.iv_top_k_guest} guest columns"] if p.iv_top_k_guest else []
    sel += [f"top {p.iv_top_k_host} per host"] if p.iv_top_k_host else []
    return [("binning", f"{p.binning.replace('_', '-')}, {p.bins} bins, ≥ {p.min_bin_rows} rows a bin"
                        + (", monotonic WOE" if p.monotonic else "")),
            ("IV selection", ", ".join(sel) or "none"), ("trained on", "WOE (scorecard)" if p.woe else "raw columns")]


def note(text: str) -> str:
    """A paragraph of explanation (``text`` is already HTML)."""
    return f'<p class="note">{text}</p>'


def row(*parts: str) -> str:
    return '<div class="row">' + "".join(p for p in parts if p) + "</div>"


# ---------------------------------------------------------------- charts

CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "Source Han Sans CN", "Noto Sans SC",
             "Microsoft YaHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC", "SimHei", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "Noto Sans CJK JP", "Noto Sans CJK TC", "Source Han Sans", "Droid Sans Fallback",
             "AR PL UMing CN", "Arial Unicode MS")
"""Font families with Chinese glyphs, preferred first (Simplified Chinese forms first)."""

# file-name parts of the same fonts, for fonts installed after matplotlib built its font list
_CJK_FILES = ("notosanscjk", "notosanssc", "sourcehansans", "msyh", "pingfang", "hiragino", "stheiti", "simhei",
              "wqy", "droidsansfallback", "uming", "arialuni")


@functools.cache
def cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs (the first of :data:`CJK_FONTS`
    found), or None. Matplotlib's font list is built once and cached on disk, so a font
    installed later (``apt-get install fonts-noto-cjk``) is looked for among the system's font
    files too, and registered."""
    from matplotlib import font_manager
    manager = font_manager.fontManager

    def first() -> str | None:
        names = {f.name for f in manager.ttflist}
        return next((n for n in CJK_FONTS if n in names), None)
    found = first()
    if found is None:
        for path in font_manager.findSystemFonts():
            key = re.sub(r"[\s_-]", "", Path(path).name.lower())
            if any(part in key for part in _CJK_FILES):
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):      # an unreadable font file: skip it
                    continue
        found = first()
    return found


def figure(width: float = 4.6, height: float = 3.3, ncols: int = 1, nrows: int = 1):
    """A matplotlib figure of ``nrows x ncols`` panels, each ``width x height`` inches (one panel: exactly)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    cjk = cjk_font()
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
                         "text.parse_math": False,        # a "$" in a column name is text, not mathtext
                         "font.family": ["DejaVu Sans", cjk] if cjk else ["DejaVu Sans"]})
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, [ax for line in axes for ax in line]


def grid(n: int, width: float, height: float, per_row: int = 3):
    """Panels for ``n`` samples, at most ``per_row`` a row; unused panels hidden."""
    ncols = min(n, per_row)
    nrows = -(-n // ncols)
    fig, axes = figure(width, height, ncols, nrows)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def svg(fig, name: str) -> str:
    """The figure as inline SVG, every id in it prefixed with ``name`` so that ids stay unique in a page."""
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = name
    originals = {} if cjk_font() else _stand_ins(fig)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight", pad_inches=0.04)
    plt.close(fig)
    text = buf.getvalue()
    for stand_in, original in originals.items():      # the browser draws the real text
        text = text.replace(_xml(stand_in), _xml(original))
    text = text[text.index("<svg"):]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    return re.sub(r'(url\(#|href="#)([^)"]+)', rf'\g<1>{name}-\2', text)


@functools.cache
def _dejavu_chars() -> frozenset[int]:
    from matplotlib import font_manager, ft2font
    return frozenset(ft2font.FT2Font(font_manager.findfont("DejaVu Sans", fallback_to_default=False)).get_charmap())


_TAG = ("\u200b", "\u200c", "\u200d")      # zero-width: a stand-in's number, invisible and of no width
_EDGE = "\u2060"                            # word joiner: where a number starts and ends


def _stand_ins(fig) -> dict[str, str]:
    """Replace, in every text of ``fig``, the characters DejaVu Sans lacks by stand-ins of about their width
    (an em dash for a full-width character such as 汉字, else ``n``), each line of text tagged with a
    number in zero-width characters; return ``{stand-in line: original line}`` to put the text back."""
    from matplotlib.text import Text
    have = _dejavu_chars()
    originals: dict[str, str] = {}
    made: dict[str, str] = {}             # original line -> its stand-in (the same at every redraw)

    def stand_in(text: str) -> str:
        if all(ord(c) in have for c in text):
            return text
        lines = []
        for line in text.split("\n"):
            if all(ord(c) in have for c in line) or line in made:
                lines.append(made.get(line, line))
                continue
            k, tag = len(originals), ""
            while True:
                k, digit = divmod(k, 3)
                tag += _TAG[digit]
                if not k:
                    break
            wide = "".join(c if ord(c) in have else "\u2014" if unicodedata.east_asian_width(c) in "WF" else "n"
                           for c in line)
            lines.append(wide + _EDGE + tag + _EDGE)
            originals[lines[-1]], made[line] = line, lines[-1]
        return "\n".join(lines)

    def standing_in(format_ticks):
        return lambda values: [stand_in(t) for t in format_ticks(values)]
    for ax in fig.axes:                       # tick labels are made anew at every draw, by the formatters
        for axis in (ax.xaxis, ax.yaxis):
            for formatter in {id(f): f for f in (axis.get_major_formatter(), axis.get_minor_formatter())}.values():
                formatter.format_ticks = standing_in(formatter.format_ticks)
    for artist in fig.findobj(Text):
        artist.set_text(stand_in(artist.get_text()))
    return originals


def _xml(text: str) -> str:
    """``text`` escaped as matplotlib writes SVG text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart(name: str, svg_text: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure class="chart" id="chart-{name}" data-chart="{name}">{svg_text}{cap}</figure>'


def psi_lines(ax) -> None:
    """The 0.1 (watch) and 0.25 (act) PSI thresholds as labelled vertical lines on ``ax``."""
    for t, lab in ((stability.WATCH, "watch"), (stability.ACT, "act")):
        ax.axvline(t, color=FLAG_COLORS[lab], lw=1, ls="--", label=f"{lab} from {t:g}")


def chart_column_psi(name: str, columns: dict[str, dict], samples: list[tuple[str, dict, str]], title: str) -> str:
    """A dot plot of the PSI of a party's own columns (one row each), one marker per compared sample:
    ``samples`` are ``(label, {column: psi entry}, colour)``."""
    cols = list(columns)
    if not cols:
        return ""
    fig, (ax,) = figure(5.6, 0.27 * len(cols) + 1.5)
    y = list(range(len(cols)))
    top = 0.3
    markers = "oDs^v<>"
    for k, (label, psis, col) in enumerate(samples):
        vals = [(psis.get(c) or {}).get("psi") for c in cols]
        pts = [(v, i) for v, i in zip(vals, y) if v is not None]
        top = max([top] + [v for v, _ in pts])
        ax.plot([v for v, _ in pts], [i for _, i in pts], markers[k % len(markers)], color=col, ms=5.5,
                label=label, alpha=0.85, mec="white", mew=0.5)
    psi_lines(ax)
    ax.set(yticks=y, xlabel="PSI against the training rows")
    ax.set_title(title, pad=24)
    ax.set_yticklabels([f"{c} (cat.)" if columns[c].get("kind") == "categorical" else c for c in cols])
    ax.set_xlim(0, top * 1.08)
    ax.set_ylim(len(cols) - 0.5, -0.5)
    ax.grid(axis="y", color="#eee", lw=0.8)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(samples) + 2, fontsize=7.5,
              handletextpad=0.3, columnspacing=0.9)
    return chart(name, svg(fig, name))


def column_psi_block(col_sets: list[tuple[str, dict, list]], shown: set[str], cohorts: list[str], owner: str
                     ) -> list[str]:
    """A party's own columns: PSI of each compared sample (a table, coloured by flag, and a dot plot)
    and, for categorical columns, the shares per value. ``col_sets`` are ``(sample, {column: psi entry},
    JSON path of that dict)``, the test rows first; the training shares are every entry's ``expected``."""
    if not col_sets or not col_sets[0][1]:
        return []
    cols, train_root = col_sets[0][1], col_sets[0][2]
    head = [("column", "column", "text"), ("kind", "type", "text"), ("nbins", "bins", "count")]
    head += [(k, f"PSI {k}", "p3") for k, _, _ in col_sets]
    crows = []
    for c, entry in cols.items():
        r = {"column": c, "kind": entry.get("kind", "numeric"), "nbins": len(entry["expected"]), "_paths": {},
             "_flags": {}}
        for k, cs, base in col_sets:
            if c in cs:
                r[k], r["_paths"][k], r["_flags"][k] = cs[c]["psi"], base + [c, "psi"], cs[c]["flag"]
        crows.append(r)
    dots = chart_column_psi("column-psi", cols, [(k, cs, color(k, cohorts)) for k, cs, _ in col_sets
                                                 if k == "test" or k in shown], f"{owner}'s own columns")
    out = [row(dots, table(crows, head, caption="Column PSI against the training rows (bins include one for "
                                                  "missing values)"))]
    cats = [c for c, e in cols.items() if e.get("kind") == "categorical"]
    if cats:
        out.append("<h3>Categorical columns by value</h3>")
        out.append(note(f"Share of rows per value. Values under {stability.RARE_SHARE:.0%} of training rows, and "
                        f"values never seen in training, are pooled as {stability.OTHER}; an empty value is "
                        f"{stability.MISSING}."))
        tabs = []
        for c in cats:
            rows = []
            for i, lab in enumerate(stability.bin_labels(cols[c])):
                r = {"value": lab, "train": cols[c]["expected"][i],
                     "_paths": {"train": train_root + [c, "expected", i]}}
                for k, cs, base in col_sets:
                    if c in cs:
                        r[k], r["_paths"][k] = cs[c]["actual"][i], base + [c, "actual", i]
                rows.append(r)
            tabs.append(table(rows, [("value", "value", "text"), ("train", "train", "pct")]
                              + [(k, k, "pct") for k, cs, _ in col_sets if c in cs], caption=c))
        out.append(row(*tabs))
    return out


# ---------------------------------------------------------------- the page

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:14px;margin:14px 0 4px}.sub{color:#555;margin-top:2px}
table{border-collapse:collapse;font-size:12px;margin:4px 0 10px}caption{text-align:left;font-weight:600;padding:2px 0}
th,td{padding:3px 7px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#f4f6f8;font-weight:600}td.t,th.t{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:10px 28px;align-items:flex-start}
figure.chart{margin:0}figure.chart svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:#555;max-width:520px}
.flag-watch{background:#fff3cd}.flag-act{background:#f8d7da}.fl{font-size:10px;color:#7a5a00}
.flag-act .fl{color:#8a1f1b}
table.dense th,table.dense td{padding:3px 4px}tr.group td{border-top:1px solid #aab}
.note{color:#555;font-size:12.5px;max-width:980px}.missing{color:#8a6d00}
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
