"""The names umi's parts share: roles, GLPFT stages, the files a stage leaves, test sets, reference agents, and the
checkpoint fingerprint. Defined once here; data, training, evaluation, the registry and serving import them.

Prompt text is not here: umi.prompts holds the formats.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

# --- roles ------------------------------------------------------------------------------------------------------------
RoleName = Literal["planner", "caller", "summarizer", "global"]  # for type checkers; the same names as ROLES
AGENT_ROLES: tuple[str, ...] = ("planner", "caller", "summarizer")  # the α-UMi agent's three models
ROLES: tuple[str, ...] = ("global", *AGENT_ROLES)  # every role a model is trained for: the single LLM's too

# --- GLPFT stages -----------------------------------------------------------------------------------------------------
STAGES: tuple[str, ...] = ROLES  # one stage per role: global first, then the three local ones from it
LOCAL_STAGES: tuple[str, ...] = AGENT_ROLES
# The compute-matched single-LLM control (the evaluation's fair baseline for α-UMi): the global model trained on, on
# the global dataset, for the tokens the three local stages spend. Not a profile entry: derived from one.
CONTROL_STAGE = "global-matched"
TRAINABLE_STAGES: tuple[str, ...] = (*STAGES, CONTROL_STAGE)

# --- files ------------------------------------------------------------------------------------------------------------
STAGE_MANIFEST = "umi_stage.json"  # beside a stage's final checkpoint: provenance, prompt format, fingerprint
DATASET_LAYOUT = "layout.json"  # in a role-dataset folder: its layout and prompt format (umi.data.reorganize)

# --- test sets --------------------------------------------------------------------------------------------------------
BFCL_TEST = "bfcl-test"  # the held-out BFCL split: reported
BFCL_DEV = "bfcl-dev"  # the BFCL dev split: what selection (promotion) reads
TOOLBENCH_OOD = "toolbench-ood"  # the α-UMi reference's ToolBench out-of-domain static set
LIVE_TEST = "live"  # live rollouts on the multi-turn entries of the test split
LIVE_DEV = "live_dev"  # live rollouts on the multi-turn entries of the dev split (selection)
STATIC_TEST_SETS: tuple[str, ...] = (BFCL_TEST, BFCL_DEV, TOOLBENCH_OOD)
LIVE_TEST_SETS: tuple[str, ...] = (LIVE_TEST, LIVE_DEV)

# --- reference agents (the names in evaluation reports and promotion decisions) ---------------------------------------
ALPHA_UMI = "alpha-umi"
SINGLE_LLM = "single-llm"
SINGLE_MATCHED = "single-matched"  # the single LLM trained with the GLPFT stages' total token budget (CONTROL_STAGE)
CHAMPION = "champion"  # the registered champion agent (also the registry alias of its versions)
RULE_LAST_TURN = "rule: last turn"  # the rule baselines (umi.eval.baselines): no model, static only
RULE_ALWAYS_CALLER = "rule: always caller"
NO_CALL = "no call"  # the do-nothing agent, static and live
CONSTANT_ANSWER = "constant answer"  # the best fixed answer, chosen on train: R-L's floor (umi.eval.baselines)
BASELINES: tuple[str, ...] = (RULE_LAST_TURN, RULE_ALWAYS_CALLER, NO_CALL, CONSTANT_ANSWER)

# --- the checkpoint fingerprint ---------------------------------------------------------------------------------------
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".gguf")


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """What identifies a checkpoint, everywhere umi stores or compares one (stage fingerprints of the next stage,
    registry tags, Bento model labels, evaluation cache keys): the fingerprint of the training stage that wrote it
    (its STAGE_MANIFEST), else a sha256 of its weight files' names, sizes and modification times (cheap: a copy counts
    as another checkpoint, never two different ones as the same), else `ref:<path>` (a hub id: its name is all we
    know). The stored values of trained stages depend on this rule: changing it retrains every stage once."""
    path = Path(checkpoint)
    manifest = path / STAGE_MANIFEST
    if manifest.is_file():
        try:
            fingerprint = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            fingerprint = None
        if isinstance(fingerprint, str) and fingerprint:
            return fingerprint
    files = sorted(p for p in path.glob("*") if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []
    if not files:
        return f"ref:{path}"
    return hashlib.sha256(
        json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()
    ).hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file's bytes, hex (a role dataset in a stage fingerprint, a downloaded wheel)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


ADAPTER_CONFIG = "adapter_config.json"  # what peft saves beside a LoRA adapter (its base, rank, scale, targets)

# the files whose bytes decide what a checkpoint generates (weights, model and generation config, tokenizer);
# not the stage manifest (timings) nor training_args.bin (a pickle of the run's paths)
GENERATION_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    ADAPTER_CONFIG,
)


def content_digest(checkpoint: str | Path) -> str:
    """sha256 over the bytes of the files that decide what a checkpoint generates (GENERATION_FILES and its weight
    files), for caches of its outputs: a retrain to the same bytes is the same model however its training stage was
    fingerprinted, and other bytes are never taken for it. A LoRA adapter's digest covers its base's (named in its
    adapter_config.json). A directory without weights (a hub id): `ref:<path>`.
    Reads every weight byte (about 1 s per 500 MB)."""
    path = Path(checkpoint)
    if not path.is_dir():
        return f"ref:{path}"
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and (p.name in GENERATION_FILES or (p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin"))
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        return f"ref:{path}"
    digest = hashlib.sha256()
    for p in files:
        with p.open("rb") as f:
            digest.update(f"{p.name}\0".encode())
            digest.update(hashlib.file_digest(f, "sha256").digest())
    # a LoRA adapter generates with its base: the same adapter bytes on a retrained base are another model
    adapter_config = path / ADAPTER_CONFIG
    if adapter_config.is_file():
        try:
            base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
        except (OSError, ValueError, AttributeError):
            base = ""
        digest.update(f"base\0{content_digest(base) if base else 'none'}".encode())
    return digest.hexdigest()


# the stage manifest's fields that say how a checkpoint was trained, not where or when (no run id, timings, paths of
# this machine's checkout other than the init's as the pipeline names it, nor fingerprints of file timestamps)
RECIPE_FIELDS: tuple[str, ...] = (
    "stage",
    "profile",
    "config",
    "dataset_sha256",
    "data_version",
    "init_from",
    "prompt_format",
)


def training_recipe(checkpoint: str | Path) -> str | None:
    """sha256 of how a trained checkpoint was made (its STAGE_MANIFEST's RECIPE_FIELDS): the same on every machine
    that runs the same stage of the same commit and seed, whatever bytes its kernels produce. None for a checkpoint
    without a manifest (an imported backbone: its bytes are its identity)."""
    manifest = Path(checkpoint) / STAGE_MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("stage"):
        return None
    fields = {k: data.get(k) for k in RECIPE_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
