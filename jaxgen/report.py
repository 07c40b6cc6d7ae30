"""One page that compares runs: `python run.py --mode=report --workdirs=a,b,...`.

Reads each workdir's summary.json, eval.json, metrics.jsonl and latest sample
grid; writes report.md with a table (family, dataset, parameters, steps, wall
time, steps/s, every test and sample metric), the training curves overlaid,
and the sample grids side by side, plus each run's evaluation protocol so a
reader can tell which numbers are comparable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from jaxgen.metric_writer import read_jsonl


class ReportError(ValueError):
  """A workdir that cannot be reported on; the message says why."""


def load_run(workdir: Path) -> dict[str, Any]:
  summary_path = workdir / "summary.json"
  if not summary_path.exists():
    raise ReportError(f"{workdir} has no summary.json: is it a jaxgen run "
                      "folder that has trained?")
  run = {"name": workdir.name, "workdir": workdir,
         "summary": json.loads(summary_path.read_text()),
         "eval": None, "records": read_jsonl(workdir / "metrics.jsonl")}
  if (workdir / "eval.json").exists():
    run["eval"] = json.loads((workdir / "eval.json").read_text())
  grids = sorted((workdir / "samples").glob("step_*.png"))
  run["grid"] = grids[-1] if grids else None
  return run


def _metric_cells(run: dict[str, Any]) -> dict[str, str]:
  cells = {}
  result = run["eval"]
  if result is None:
    return cells
  for name, value in result["metrics"].items():
    cells[name] = f"{value['mean']:.4g} ± {value['stderr']:.2g}"
  for name, value in result.get("sample_metrics", {}).items():
    if isinstance(value, float):
      cells[name] = f"{value:.4g}"
    elif isinstance(value, dict) and "mean" in value:
      spread = value.get("stderr", value.get("std_over_splits"))
      cells[name] = f"{value['mean']:.4g} ± {spread:.2g}"
    elif name == "coverage":
      cells["classes_covered"] = str(value["classes_covered"])
    elif name == "non_finite_samples" and value:
      cells[name] = str(value)
  latent = result.get("latent")
  if latent:
    cells["active_units"] = f"{latent['active_units']} / {latent['latent_dim']}"
  return cells


def _table(runs: list[dict[str, Any]]) -> str:
  fixed = ["run", "family", "dataset", "parameters", "steps", "wall s",
           "steps/s", "devices", "eval step"]
  per_run = [_metric_cells(r) for r in runs]
  metric_names = sorted({k for cells in per_run for k in cells})
  lines = ["| " + " | ".join(fixed + metric_names) + " |",
           "|" + "---|" * (len(fixed) + len(metric_names))]
  for run, cells in zip(runs, per_run):
    s = run["summary"]
    row = [run["name"], s["family"], s["dataset"], f"{s['num_params']:,}",
           str(s["step"]), f"{s['wall_seconds']:.0f}",
           f"{s['steps_per_second'] or 0:.2f}",
           f"{s['devices']['count']} x {s['devices']['kind']}",
           str(run["eval"]["step"]) if run["eval"] else "no eval.json"]
    row += [cells.get(name, "–") for name in metric_names]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  skip = {"step", "epoch", "steps_per_second"}
  keys = sorted({k for r in runs for rec in r["records"] for k, v in rec.items()
                 if k not in skip and isinstance(v, (int, float))})
  if not keys:
    return
  cols = min(3, len(keys))
  rows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    for run in runs:
      points = [(rec["step"], rec[key]) for rec in run["records"] if key in rec]
      if points:
        ax.plot(*zip(*points), lw=1.2, label=run["name"])
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _side_by_side(runs: list[dict[str, Any]], path: Path) -> bool:
  grids = [(r["name"], Image.open(r["grid"]).convert("RGB")) for r in runs
           if r["grid"] is not None]
  if not grids:
    return False
  caption, gap = 16, 10
  width = sum(g.width for _, g in grids) + gap * (len(grids) - 1)
  height = max(g.height for _, g in grids) + caption
  canvas = Image.new("RGB", (width, height), "white")
  x = 0
  for name, grid in grids:
    canvas.paste(grid, (x, caption))
    ImageDraw.Draw(canvas).text((x + 2, 2), name, fill="black")
    x += grid.width + gap
  canvas.save(path)
  return True


def write_report(workdirs: list[Path], out_dir: Path) -> Path:
  """Writes out_dir/report.md (+ curves.png, samples.png); returns its path."""
  runs = [load_run(w) for w in workdirs]
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ReportError(f"workdir names must differ to label the runs: {names}")
  out_dir.mkdir(parents=True, exist_ok=True)
  _plot_curves(runs, out_dir / "curves.png")
  has_samples = _side_by_side(runs, out_dir / "samples.png")
  lines = ["# jaxgen comparison", "",
           "Runs: " + ", ".join(f"`{r['workdir']}`" for r in runs), "",
           _table(runs), "",
           "Wall seconds and steps/s come from each run's summary.json (steps/s "
           "after compilation); compare them only between runs on the same "
           "hardware (the devices column).", ""]
  if (out_dir / "curves.png").exists():
    lines += ["## Training curves", "", "![curves](curves.png)", ""]
  if has_samples:
    lines += ["## Samples (latest snapshot of each run, fixed noise seed)", "",
              "![samples](samples.png)", ""]
  lines += ["## Evaluation protocols", "",
            "Numbers are comparable only where these agree (dataset, "
            "binarization, extractor and its weights, sample count).", ""]
  for run in runs:
    lines.append(f"### {run['name']}")
    if run["eval"] is None:
      lines += ["", "No eval.json: run `--mode=eval` on this workdir.", ""]
      continue
    protocol = {**run["eval"]["protocol"], **run["eval"].get("sample_protocol", {})}
    lines += [""] + [f"- {k}: {v}" for k, v in protocol.items()] + [""]
  path = out_dir / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return path
