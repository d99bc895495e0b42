"""Packaging and configuration, without a server: the Bento's requirements follow requirements.lock, the settings refuse
what they cannot honour, user toolkits load from `name=module:factory` entries, `umi deploy` refuses half a set of
model directories."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from umi.serve.bento_build import SERVE_REQUIREMENTS, serve_requirements
from umi.serve.settings import ServeSettings
from umi.serve.toolkits import ToolkitError, default_toolkits

REPO = Path(__file__).resolve().parents[2]


def test_the_bento_requirements_are_the_lock_less_what_the_image_installs_otherwise():
    lock = REPO / "requirements.lock"
    assert (REPO / SERVE_REQUIREMENTS).read_text() == serve_requirements(lock), (
        "umi/serve/requirements.txt is stale: `umi deploy build` regenerates it"
    )
    pinned = re.search(r"^bfcl_eval==(\S+)$", lock.read_text(), re.M).group(1)
    assert f'"bfcl_eval=={pinned}"' in (REPO / "umi/serve/container_setup.sh").read_text()


def test_the_bentofile_builds_offline_from_the_service():
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["service"] == "umi.serve.service:UmiAgent"
    assert bentofile["python"]["lock_packages"] is False
    assert bentofile["python"]["requirements_txt"] == str(SERVE_REQUIREMENTS)
    assert (REPO / bentofile["docker"]["setup_script"]).is_file()


def test_the_image_installs_no_compiler_toolchain():
    """What `bentoml build` makes of the service's image and bentofile.yaml: our Python base image, no system packages
    (BentoML's Debian default puts build-essential first, 633 MB that nothing runs), the setup script last."""
    from _bentoml_sdk.images import populate_image_from_build_config
    from bentoml._internal.bento.build_config import BentoBuildConfig

    from umi.serve.service import IMAGE

    with (REPO / "bentofile.yaml").open() as f:
        config = BentoBuildConfig.from_yaml(f)
    image = populate_image_from_build_config(IMAGE, config, str(REPO))
    assert image.base_image == "umi-python:3.11-bookworm" and image.python_version == "3.11"
    assert image.commands == []
    assert not any(re.search(r"apt|build-essential|gcc", c) for c in image.post_commands), image.post_commands
    assert [Path(script).name for script in image.scripts] == ["container_setup.sh"]
    assert f'"{IMAGE.base_image}"' in (REPO / "deploy/image.sh").read_text(), "deploy/image.sh builds another base"


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"UMI_SERVE_MAX_STPES": "4"}, "unknown settings in the environment: ['UMI_SERVE_MAX_STPES']"),
        ({"UMI_SERVE_MAX_STEPS": "20"}, "less than or equal to 12"),
        ({"UMI_SERVE_PLANNER_DIR": "."}, "give all of planner/caller/summarizer or none"),
        ({"UMI_SERVE_PLANNER_DIR": "/no/such/dir"}, "is not a directory"),
        ({"UMI_SERVE_PLANNER_TOKENS": "2048"}, "planner_tokens exceeds max_new_tokens"),
        ({"UMI_SERVE_DEFAULT_STEPS": "9"}, "default_steps 9 exceeds max_steps 8"),
    ],
)
def test_settings_refuse_what_they_cannot_honour(monkeypatch, env, problem):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=re.escape(problem)):
        ServeSettings()


def test_settings_from_the_environment(monkeypatch, tmp_path):
    for role in ("planner", "caller", "summarizer"):
        monkeypatch.setenv(f"UMI_SERVE_{role.upper()}_DIR", str(tmp_path))
    monkeypatch.setenv("UMI_SERVE_MAX_STEPS", "12")
    settings = ServeSettings()
    assert settings.model_dirs == {"planner": tmp_path, "caller": tmp_path, "summarizer": tmp_path}
    assert settings.max_steps == 12 and settings.doc_style == "compact"


def test_user_toolkits_load_from_entries():
    toolkits = default_toolkits(1.0, "weather=serve_tools:weather_toolkit")
    runtime = toolkits.create("weather", {"unit": "F"})
    assert [s.name for s in runtime.specs] == ["get_weather", "slow_lookup"]
    assert runtime.dispatch("get_weather", {"city": "Rome"}).ok
    slow = runtime.dispatch("slow_lookup", {"seconds": 2})
    assert not slow.ok and slow.error_kind == "timeout"  # the service's tool time limit, whatever the toolkit does
    with pytest.raises(ToolkitError, match="unit must be C or F"):
        toolkits.create("weather", {"unit": "K"})
    for entry, problem in [
        ("weather", "expected name=module:factory"),
        ("w=serve_tools:nothing", "has no 'nothing'"),
        ("bfcl=serve_tools:weather_toolkit", "already registered"),
    ]:
        with pytest.raises(ValueError, match=problem):
            default_toolkits(1.0, entry)


def test_deploy_build_wants_all_three_directories_or_none(tmp_path):
    from umi.cli.main import app

    result = CliRunner().invoke(app, ["deploy", "build", "--planner", str(tmp_path), "--no-build"])
    assert result.exit_code == 1 and "give all of --planner/--caller/--summarizer or none" in result.output
