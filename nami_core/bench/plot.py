"""Latency against resolution, one line per mode, each point labelled with its reduction vs flux-base
(the layout of the paper's Fig. 2). Drawn with matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path

from ..errors import NamiError

MODE_STYLES = {
    "flux-base": dict(color="#7f7f7f", marker="s", label="flux-base (all blocks, full resolution)"),
    "flow-only": dict(color="#1f77b4", marker="^", label="flow-only (piecewise flow, all blocks)"),
    "nami": dict(color="#d62728", marker="o", label="nami (piecewise flow + nested modules)"),
}


def check_plot_path(path: str | Path) -> Path:
    """The plot path, if matplotlib can write its format (checked before a long benchmark runs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise NamiError(f"--plot {path}: unknown image format {path.suffix or '(none)'}; use .png, .pdf or .svg")
    return path


def plot_latency(report: dict, path: str | Path, title: str | None = None) -> Path:
    """Write the latency plot of a `run_latency` report to `path` (format from its suffix: .png, .pdf, .svg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    path = check_plot_path(path)
    modes = list(dict.fromkeys(r["mode"] for r in report["results"]))
    resolutions = sorted({r["resolution"] for r in report["results"]})
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for mode in modes:
        rows = sorted((r for r in report["results"] if r["mode"] == mode), key=lambda r: r["resolution"])
        xs = [r["resolution"] for r in rows]
        ys = [r["ms_median"] / 1000.0 for r in rows]
        ax.plot(xs, ys, linewidth=2, **MODE_STYLES.get(mode, dict(label=mode)))
        for row, y in zip(rows, ys):
            reduction = report["reduction"].get(str(row["resolution"]), {}).get(mode)
            if reduction is None:
                continue
            bound = report["bound"].get(str(row["resolution"]), {}).get(mode)
            text = f"{-100 * reduction:+.0f}%" + (f" (bound {-100 * bound:+.0f}%)" if bound is not None else "")
            ax.annotate(text, (row["resolution"], y), textcoords="offset points", xytext=(6, -12),
                        fontsize=8, color=MODE_STYLES.get(mode, {}).get("color", "black"))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.margins(x=0.25, y=0.1)
    ax.set_xticks(resolutions)
    ax.set_xticklabels([f"{r}²" for r in resolutions])
    ax.set_xlabel("resolution (pixels)")
    ax.set_ylabel("seconds per image")
    ax.set_title(title or f"{report['device']}, {report['dtype']}, attention {report['attention']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
