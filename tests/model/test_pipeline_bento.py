"""The pipeline's Bento step (flows.tasks.bento_after): built only after a promotion that moved a champion, and a
failed build is reported in the result instead of failing the run. A temporary Prefect server, an empty MLflow store
(so the build fails on the missing champions before `bentoml build` would start), a temporary BentoML home."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_the_bento_is_built_after_a_moving_promotion_only_and_a_failure_is_reported(tmp_path, monkeypatch):
    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    from flows.tasks import bento_after

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    mlflow.set_tracking_uri(uri)
    bentofile = tmp_path / "bentofile.yaml"
    bentofile.write_text("service: umi.serve.service:UmiAgent\n")
    moved = {"promote": True, "moved": {"caller": ["1", "2"]}}
    try:
        assert bento_after({"promote": False, "moved": {}}, True, str(bentofile)) is None  # nothing changed
        assert bento_after(moved, False, str(bentofile)) is None  # switched off
        assert bento_after(moved, True, str(tmp_path / "none.yaml")) is None  # no bentofile here
        with prefect_test_harness(server_startup_timeout=120):
            failed = bento_after(moved, True, str(bentofile))
    finally:
        mlflow.set_tracking_uri(None)
    assert set(failed) == {"error"} and "umi-planner" in failed["error"], failed
    assert not (tmp_path / "bentoml" / "bentos").exists()
