"""umi.vocabulary: the checkpoint fingerprint (one rule, the one stored stage fingerprints were computed with) and the
shared names defined there only."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import get_args

from umi import vocabulary as v
from umi.vocabulary import STAGE_MANIFEST, checkpoint_fingerprint

UMI = Path(v.__file__).resolve().parent


def _weights_dir(path: Path, payload: bytes = b"weights") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(payload)
    (path / "tokenizer.json").write_text("{}")
    return path


def test_the_role_type_names_the_roles():
    assert set(get_args(v.RoleName)) == set(v.ROLES) and len(v.ROLES) == 4
    assert v.STAGES == v.ROLES and v.LOCAL_STAGES == v.AGENT_ROLES == v.ROLES[1:]


def test_a_trained_checkpoint_is_identified_by_its_stage_fingerprint(tmp_path):
    ckpt = _weights_dir(tmp_path / "m")
    (ckpt / STAGE_MANIFEST).write_text(json.dumps({"stage": "planner", "fingerprint": "f" * 64}))
    assert checkpoint_fingerprint(ckpt) == "f" * 64
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)  # a download of the registered version: new file times, same checkpoint
    assert checkpoint_fingerprint(copy) == checkpoint_fingerprint(ckpt)


def test_without_a_stage_fingerprint_the_weight_files_identify_it(tmp_path):
    ckpt = _weights_dir(tmp_path / "m")
    files = [ckpt / "model.safetensors"]
    # the rule every stored stage fingerprint was computed with (the start weights of the global stage are an
    # imported backbone, which has no stage manifest): names, sizes and mtimes of the weight files, in name order
    stored_rule = hashlib.sha256(
        json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()
    ).hexdigest()
    assert checkpoint_fingerprint(ckpt) == stored_rule
    (ckpt / STAGE_MANIFEST).write_text(json.dumps({"stage": "planner"}))  # a manifest naming no fingerprint
    assert checkpoint_fingerprint(ckpt) == stored_rule
    (ckpt / STAGE_MANIFEST).write_text("{not json")  # a damaged one: the files still identify the checkpoint
    assert checkpoint_fingerprint(ckpt) == stored_rule
    (ckpt / "tokenizer.json").write_text('{"changed": 1}')  # not a weight file
    assert checkpoint_fingerprint(ckpt) == stored_rule
    stat = (ckpt / "model.safetensors").stat()
    os.utime(ckpt / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten weights
    assert checkpoint_fingerprint(ckpt) != stored_rule
    other = _weights_dir(tmp_path / "other", b"other weights")
    assert checkpoint_fingerprint(other) != checkpoint_fingerprint(ckpt)


def test_a_hub_id_or_missing_directory_is_named_by_its_path(tmp_path):
    assert checkpoint_fingerprint("HuggingFaceTB/SmolLM2-135M") == "ref:HuggingFaceTB/SmolLM2-135M"
    assert checkpoint_fingerprint(tmp_path / "nothing") == f"ref:{tmp_path / 'nothing'}"
    (tmp_path / "empty").mkdir()
    assert checkpoint_fingerprint(tmp_path / "empty") == f"ref:{tmp_path / 'empty'}"


def test_the_train_stage_fingerprint_uses_it_for_the_start_weights(tmp_path):
    from umi.train.config import load_config
    from umi.train.stages import stage_fingerprint

    datasets = tmp_path / "datasets"
    (datasets / "global").mkdir(parents=True)
    (datasets / "global" / "train.jsonl").write_text("{}\n")
    backbone = _weights_dir(tmp_path / "backbone")
    _, src = stage_fingerprint("global", load_config("tiny"), datasets, backbone)
    assert src["init"] == checkpoint_fingerprint(backbone)


# --- the names are defined in umi.vocabulary only ---------------------------------------------------------------------
# (not ALPHA_UMI: "alpha-umi" is also the name of a data source, umi.data.alpha_umi.SOURCE)
SHARED_STRINGS = {
    *(v.STAGE_MANIFEST, v.DATASET_LAYOUT, v.CONTROL_STAGE),
    *(v.BFCL_TEST, v.BFCL_DEV, v.TOOLBENCH_OOD, v.LIVE_DEV),
    *(v.SINGLE_LLM, v.SINGLE_MATCHED, *v.BASELINES),
}
ROLE_NAMES = set(v.ROLES)
# Role names together that are not a list of the roles: another concept, which happens to be spelled with them.
NOT_ROLE_LISTS = {
    ("umi/parsing.py", '"planner", "caller", "global"'),  # ParsedRole: the roles whose output can fail to parse
}

# Files other helpers own in this round (issue 11): their role lists and agent names are theirs to replace; the lead
# removes each entry when the change that fixes it is merged.
KNOWN: set[tuple[str, str]] = set()


def _violations() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(UMI.rglob("*.py")):
        if path.name == "vocabulary.py" and path.parent == UMI:
            continue
        rel = path.relative_to(UMI.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            # a role list written out: three or more role names in a tuple, list or set literal
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 3:
                names = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if len(names) == len(node.elts) and set(names) <= ROLE_NAMES:
                    found.add((rel, ast.get_source_segment(text, node)))
            # a shared name defined again: NAME = "<one of the vocabulary's strings>"
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                value = node.value
                if isinstance(value, ast.Constant) and value.value in SHARED_STRINGS:
                    found.add((rel, ast.get_source_segment(text, node)))
    return found


def test_roles_stages_files_test_sets_and_agents_are_defined_once():
    found = _violations() - NOT_ROLE_LISTS
    new = found - KNOWN
    assert not new, f"import these from umi.vocabulary instead of writing them again: {sorted(new)}"
    fixed = KNOWN - found
    assert not fixed, f"fixed, remove from KNOWN: {sorted(fixed)}"
