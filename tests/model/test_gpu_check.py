"""benchmarks/gpu_check.py (issue 30) on CPU, so that the GPU check cannot rot before a GPU runs it.

The slow test runs the script as the device machine would, as far as a CPU can: in a fresh interpreter that sees only
the packages of the device machine's image and the wheels `gpu_check.sh wheels` carries there (no site-packages; links
to the allowed packages only, so a new import of anything else in the checked code fails here first), with the tiny
model and a few steps. Every check must pass, and each CUDA-only part must say why it was skipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# The Python packages of the device machine's image ('cuda'), as the device notes listed them on 2026-11-17.
DEVICE_IMAGE = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bf16_peak_comes_from_the_device_name_or_the_flag():
    gc = load_script()
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.0, "table: H100")
    assert gc.peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert gc.peak_tflops("NVIDIA H200", None)[0] == 989.0
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == (500.0, "--peak-tflops")
    peak, why = gc.peak_tflops("Some Future GPU", None)
    assert peak is None and "--peak-tflops" in why


def test_the_carried_wheels_are_what_the_check_needs_and_never_torch():
    carried = load_script().carried_distributions()
    for needed in ("pydantic", "pydantic-core", "pydantic-settings", "fastapi", "starlette", "jsonschema", "httpx"):
        assert needed in carried, needed
    for stack in ("transformers", "tokenizers", "accelerate", "peft", "safetensors"):
        assert stack in carried, stack
    assert "torch" not in carried and "numpy" not in carried
    locked = dict(
        line.strip().split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    locked = {k.lower().replace("_", "-"): v for k, v in locked.items()}
    assert all(locked.get(name) == version for name, version in carried.items()), "not requirements.lock's versions"


def test_the_committed_sample_is_small_and_what_its_manifest_says():
    gc = load_script()
    manifest = json.loads((gc.DATA / gc.MANIFEST).read_text())
    total = sum(p.stat().st_size for p in gc.DATA.iterdir())
    assert total < 2 * 2**20
    train = gc.read_jsonl_gz(gc.DATA / manifest["train"]["file"])
    prompts = gc.read_jsonl_gz(gc.DATA / manifest["prompts"]["file"])
    assert len(train) == manifest["train"]["examples"] and len(prompts) == manifest["prompts"]["examples"] == 64
    assert {r["role"] for r in train} == {"global"} and {r["role"] for r in prompts} == {"planner"}
    assert len({r["trajectory_id"] for r in train}) == manifest["train"]["trajectories"]
    with gzip.open(gc.DATA / manifest["tokenizer"]["file"], "rt") as f:
        assert json.load(f)["model"]["type"] == "BPE"


def test_a_failed_check_keeps_its_figures_and_the_next_check_still_runs(tmp_path):
    gc = load_script()
    report = gc.Report(tmp_path / "out.json", [])

    def half_done():
        raise gc.CheckFailed("batch 32: OutOfMemoryError", {"batch_1": {"tokens_per_second": 10.0}})

    report.run("generate", half_done)
    report.run("serve", lambda: {"tool_call": None})
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["ok"] is False and data["failed"] == ["generate"]
    assert data["checks"]["generate"]["batch_1"] == {"tokens_per_second": 10.0}
    assert "OutOfMemoryError" in data["checks"]["generate"]["error"]
    assert data["checks"]["serve"]["status"] == "ok"


def test_the_preflight_step_runs_per_step_and_packed_to_the_same_loss():
    """`--check-imports` runs this on the device before the real run (here on CPU, bf16 autocast as there)."""
    gc = load_script()
    losses = gc.smoke(gc.parse_args([]), "cpu")
    assert losses["per_step"] == pytest.approx(losses["packed"], rel=2e-2)


def device_like_site(folder: Path) -> Path:
    """A folder of links to the installed packages the device machine would have (its image's, the carried wheels),
    for an interpreter started without site-packages."""
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    allowed = {canonicalize_name(n) for n in DEVICE_IMAGE.split()} | set(load_script().carried_distributions())
    folder.mkdir()
    for dist in md.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in allowed:
            continue
        for entry in {Path(f).parts[0] for f in dist.files or ()}:
            source = Path(dist.locate_file(entry))
            if entry in ("..", "__pycache__") or entry.endswith(".pth") or not source.exists():
                continue
            if not (folder / entry).exists():
                (folder / entry).symlink_to(source)
    return folder


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_with_the_device_machines_packages_and_says_what_it_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: run `bash benchmarks/gpu_check.sh run` for the real check")
    site = device_like_site(tmp_path / "site")
    out = tmp_path / "gpu-check.json"
    args = ["--json", str(out), "--model", "tiny", "--cpu-threads", "1", "--steps", "2", "--warmup-steps", "1"]
    args += ["--examples", "4", "--per-device-batch-size", "2", "--global-batch-size", "4", "--max-length", "2048"]
    args += ["--gen-prompts", "4", "--gen-new-tokens", "2", "--gen-batch", "4"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), *args], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["ok"] and data["failed"] == []
    checks = data["checks"]
    assert {name: c["status"] for name, c in checks.items()} == dict.fromkeys(
        ("setup", "train", "loss", "generate", "serve"), "ok"
    )
    train = checks["train"]
    for arm, attention in (("per_step", "sdpa"), ("packed", "umi_tree")):
        figures = train[arm]
        assert figures["attention"] == attention and figures["timed_steps"] == 1
        assert figures["target_tokens_per_second"] > 0 and figures["tokens_per_second"] > 0
        assert figures["mfu"] is None and figures["precision"] == "fp32"
    assert train["packed"]["tokens"] < train["per_step"]["tokens"]  # the shared prefixes ran once
    assert train["packed_over_per_step"] > 0
    assert checks["loss"]["fp32"]["loss_rel_diff"] <= 1e-4 and "bf16" not in checks["loss"]
    generate = checks["generate"]
    assert generate["batch_1"]["new_tokens"] == generate["batch_4"]["new_tokens"] == 8
    assert checks["serve"]["tool_call"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert checks["serve"]["finish_reason"] == "tool_calls"
    skipped = data["skipped"]
    assert set(skipped) == {"cuda", "train.mfu", "train.bf16", "loss.bf16"}
    assert all("CUDA" in why for why in skipped.values())
    assert "== gpu check: all checks ok" in done.stdout
