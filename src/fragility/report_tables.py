"""Study-level tables: stack every cell's outputs and write the human-readable summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .io import write_csv, write_parquet
from .metrics import format_value

CELL_KEYS = ["study", "dataset", "arch", "decay", "seed"]


def _cell_from_path(path: str) -> dict:
    """results/{study}/{dataset}/{arch}/wd{decay}/seed{seed}/<file> → the cell's keys."""
    parts = Path(path).parts
    i = parts.index("results") if "results" in parts else len(parts) - 6
    study, dataset, arch, wd, seed = parts[i + 1 : i + 6]
    return {"study": study, "dataset": dataset, "arch": arch, "decay": float(wd[2:]), "seed": int(seed[4:])}


def summary_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """Correlations as strings: a number, or the flag's name instead of it."""
    out = correlations.copy()
    for col in ("pearson", "spearman"):
        out[col] = [format_value(v, f, 3) for v, f in zip(out[col], out["flag"].fillna(""))]
    keep = CELL_KEYS + ["test_point", "estimator", "target", "subset", "n", "pearson", "spearman", "flag",
                        "drift_loss_change", "actual_std", "train_accuracy", "test_accuracy"]
    return out[[c for c in keep if c in out.columns]]


def aggregate_study(correlation_paths, row_paths, metric_paths, diagnostic_paths,
                    correlations_out, summary_out, rows_out, training_out, diagnostics_out) -> pd.DataFrame:
    correlations = pd.concat([pd.read_parquet(p) for p in correlation_paths], ignore_index=True)
    write_parquet(correlations, correlations_out)
    write_csv(summary_table(correlations), summary_out)
    write_parquet(pd.concat([pd.read_parquet(p) for p in row_paths], ignore_index=True), rows_out)
    training = []
    for path in metric_paths:
        metrics = json.loads(Path(path).read_text())
        metrics.pop("history", None)
        metrics["flags"] = ";".join(metrics.get("flags", []))
        training.append({**_cell_from_path(path), **metrics})
    write_csv(pd.DataFrame(training), training_out)
    diagnostics = []
    for path in diagnostic_paths:
        record = json.loads(Path(path).read_text())
        points = record.pop("test_points", [])
        statuses = ";".join(sorted({p["status"] for p in points}))
        diagnostics.append({**_cell_from_path(path), **{k: v for k, v in record.items() if not isinstance(v, (list, dict))},
                            "statuses": statuses})
    write_csv(pd.DataFrame(diagnostics), diagnostics_out)
    return correlations
