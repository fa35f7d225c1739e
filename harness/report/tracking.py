"""MLflow tracking through the client API: parent runs per table or sweep, nested children.

Runs are opened by hand (not Optuna's deprecated callback) with `MlflowClient`, which is
safe from several worker processes: each child run is created with the parent's id as
its `mlflow.parentRunId` tag. A parent is found again by its `granalign.study` tag, so a
resumed or repeated table adds to the same parent instead of starting a new one.

MLflow metric names cannot contain `@`; `metric_key` writes `R1@0.5` as `R1_at_0.5`
and `evaluator_key` reads it back.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.core.provenance import git_commit, package_versions
from harness.data.spec import dataset_spec

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STUDY_TAG = "granalign.study"
KIND_TAG = "granalign.kind"  # parent | row | trial


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def evaluator_key(name: str) -> str:
    return name.replace("_at_", "@")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of an evaluator result, as flat MLflow-safe keys.

    The `brief` keys keep their names (`MR-full-mAP`); nested ones are joined with `/`
    (`full/MR-mAP/0.55`)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = k if (prefix in ("", "brief/")) else f"{prefix}{k}"
        if k == "brief" and isinstance(v, Mapping):
            out.update(flatten_metrics(v, "brief/"))
        elif isinstance(v, Mapping):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[metric_key(key)] = float(v)
    return out


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a SQLite store, artifacts go to `mlartifacts/` next to the database file."""
    m = re.match(r"sqlite:///(.+)$", uri)
    if not m:
        return None
    db = Path(m.group(1)).expanduser().resolve()
    safe = re.sub(r"[^\w.-]+", "_", experiment)
    return (db.parent / "mlartifacts" / safe).as_uri()


class Tracker:
    """One MLflow experiment (a table or a sweep) and its parent/child runs."""

    def __init__(self, experiment: str, uri: str | None = None) -> None:
        os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        from mlflow.tracking import MlflowClient  # lazy: heavy optional (mlflow, 2 s)

        self.uri = tracking_uri(uri)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_location(self.uri, experiment)
                )
            except Exception:  # created meanwhile by another worker
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id
        self.experiment = experiment

    # -- runs ---------------------------------------------------------------------------------
    def find_parent(self, study: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = 'parent'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def parent(self, study: str, name: str, tags: Mapping[str, str]) -> str:
        """The parent run of `study`, created on first use and reused afterwards."""
        run_id = self.find_parent(study)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={**tags, STUDY_TAG: study, KIND_TAG: "parent"},
            )
            run_id = run.info.run_id
        return run_id

    def child(
        self,
        parent_id: str,
        name: str,
        kind: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> str:
        study = self.client.get_run(parent_id).data.tags.get(STUDY_TAG, "")
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={**tags, "mlflow.parentRunId": parent_id, STUDY_TAG: study, KIND_TAG: kind},
        )
        run_id = run.info.run_id
        self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # lazy: heavy optional (mlflow)

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric  # lazy: heavy optional (mlflow)

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # lazy: heavy optional (mlflow)

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if items:
            self.client.log_batch(run_id, tags=items)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_text(text, encoding="utf-8")
            folder = str(Path(path).parent) if str(Path(path).parent) != "." else None
            self.client.log_artifact(run_id, str(local), folder)

    def log_file(self, run_id: str, local: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local), folder)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def children(self, parent_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
            max_results=5000,
        )


def provenance_tags(
    config_hash: str, fingerprint: str, dataset: str, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    tags = {
        "config_hash": config_hash,
        "cache_fingerprint": fingerprint,
        "dataset": dataset,
        "synthetic": str(dataset_spec(dataset).synthetic).lower(),
        "git_commit": git_commit(),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
    }
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags
