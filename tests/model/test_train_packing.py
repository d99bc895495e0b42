"""Tree packing (umi.train.packing): packed loss and gradients equal the per-step ones, cuts keep every target whole,
tokenisation fallbacks are counted, and two training steps give the same weights with packing on and off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer

from umi.data.reorganize import role_examples
from umi.schema import Step, ToolSpec, Trajectory
from umi.train.config import load_config
from umi.train.engine import completion_loss, encode_role_dataset, encode_role_dataset_packed
from umi.train.packing import (
    TREE_ATTENTION,
    PackedCollator,
    TreeLayout,
    pack,
    tree_attention_forward,
    tree_attention_mask,
    tree_example,
    use_tree_attention,
)
from umi.train.stages import train_stage
from umi.train.tokenize import IGNORE_INDEX, CompletionCollator

ROLES = ("global", "planner", "caller", "summarizer")
REPO = Path(__file__).resolve().parents[2]

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the weather of a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "the city"}},
        "required": ["city"],
    },
)


def multi_turn(i: int, turns: int = 2, calls: int = 2) -> Trajectory:
    """A trajectory of `turns` user turns, each answered after `calls` calls: planner/global see a growing history."""
    steps: list[Step] = []
    for t in range(turns):
        steps.append(Step(role="user", content=f"Weather in city {i}-{t}, please?"))
        for c in range(calls):
            steps.append(Step(role="assistant", content=f"I call get_weather ({c}).", decision="caller"))
            steps.append(Step(role="caller", tool_name="get_weather", arguments={"city": f"C{i}{t}{c}"}))
            steps.append(Step(role="observation", content=json.dumps({"temperature": 10 + i + t + c})))
        steps.append(Step(role="assistant", content="I can answer now.", decision="conclusion"))
        steps.append(Step(role="conclusion", content=f"It is {10 + i + t} degrees."))
    return Trajectory(id=f"mt{i}", source="test", tools=[WEATHER], instruction="weather", steps=steps)


def write_multi_turn_datasets(root: Path, n: int = 2) -> Path:
    files = {}
    for role in ROLES:
        (root / role).mkdir(parents=True, exist_ok=True)
        files[role] = (root / role / "train.jsonl").open("w")
    for i in range(n):
        for role, ex in role_examples(multi_turn(i), doc_style="reference"):
            files[role].write(json.dumps(ex) + "\n")
    for f in files.values():
        f.close()
    return root


@pytest.fixture(scope="module")
def multi_turn_datasets(tmp_path_factory) -> Path:
    return write_multi_turn_datasets(tmp_path_factory.mktemp("multi-turn"))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _loss_and_grads(model, batches: list[dict], n_targets: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Sum of the batches' losses, each normalised by the same target count (one accumulated optimiser step)."""
    model.zero_grad()
    total = 0.0
    for batch in batches:
        batch = {k: v for k, v in batch.items() if k != "real_tokens"}
        loss, _ = completion_loss(model, batch, n_targets)
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in b) ** 0.5
    return num / sum(float((b[k] ** 2).sum()) for k in b) ** 0.5


def assert_packed_equals_per_step(model, tokenizer, records: list[dict], max_length: int, pack_length: int) -> dict:
    """Packed vs per-step on the same examples: loss and gradients within relative 1e-4 (float32)."""
    cache: dict = {}
    examples = [
        tree_example(tokenizer, r["prompt"], r["target"], r["history_span"], max_length, r["id"], cache)
        for r in records
    ]
    n_targets = sum(ex.target_tokens for ex in examples)
    seqs = pack(examples, pack_length)
    assert all(len(s.input_ids) <= pack_length for s in seqs)
    # every target whole: the packed labels are exactly the per-step targets, in order
    packed_targets = [t for s in seqs for t in s.labels if t != IGNORE_INDEX]
    assert packed_targets == [t for ex in examples for t in ex.encoded.labels if t != IGNORE_INDEX]
    collate = PackedCollator(tokenizer.pad_token_id)
    packed = [collate([{k: [s.to_row()[k]] for k in s.to_row()}]) for s in seqs]
    per_step = [
        CompletionCollator(tokenizer.pad_token_id)([{"input_ids": ex.encoded.input_ids, "labels": ex.encoded.labels}])
        for ex in examples
    ]
    loss_s, grads_s = _loss_and_grads(model, per_step, n_targets)
    # both ways of attending along the tree: SDPA over the dense mask, and tree attention (only the visible blocks)
    for attention in ("sdpa", "tree"):
        calls = []
        if attention == "tree":
            use_tree_attention(model)

            def counting(*args, tree_layout=None, **kwargs):
                calls.append(tree_layout is not None)
                return tree_attention_forward(*args, tree_layout=tree_layout, **kwargs)

            AttentionInterface.register(TREE_ATTENTION, counting)
        loss_p, grads_p = _loss_and_grads(model, packed, n_targets)
        if attention == "tree":  # every layer of every packed batch took the tree path
            AttentionInterface.register(TREE_ATTENTION, tree_attention_forward)
            assert calls.count(True) == model.config.num_hidden_layers * sum("tree_layout" in b for b in packed) > 0
        assert grads_p.keys() == grads_s.keys() and grads_s
        assert abs(loss_p - loss_s) <= 1e-4 * abs(loss_s), (attention, loss_p, loss_s)
        assert _relative(grads_p, grads_s) <= 1e-4, attention
    model.set_attn_implementation("sdpa")
    return {
        "examples": len(examples),
        "fallbacks": sum(ex.fallback for ex in examples),
        "sequences": len(seqs),
        "per_step_tokens": sum(ex.length for ex in examples),
        "packed_tokens": sum(len(s.input_ids) for s in seqs),
    }


def test_tree_mask_sees_only_the_root_path():
    # segments: 0 root, 1 child of 0, 2 child of 1, 3 child of 0 (a sibling branch of 1)
    mask = tree_attention_mask([0, 0, 1, 2, 3, 3], [-1, 0, 1, 0], 7)
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # segment 3 skips segments 1 and 2
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]
    assert mask.int().tolist() == expected


def test_tree_layout_chains_a_segment_with_the_child_that_follows_it():
    # token order: 0 root, 1 child of 0, 2 child of 0, 3 child of 2, 4 child of 1; a padded second row
    layout = TreeLayout.from_segments([([0, 0, 1, 2, 2, 3, 4], [-1, 0, 0, 2, 1]), ([0, 0, 0], [-1])])
    assert layout.rows[0] == [(0, 3, ()), (3, 6, ((0, 2),)), (6, 7, ((0, 3),))]  # adjacent ancestors: one range
    assert layout.rows[1] == [(0, 3, ())]


def test_tree_attention_equals_sdpa_over_the_dense_tree_mask():
    """Outputs and gradients of tree attention equal SDPA with the dense mask, padding and GQA included."""
    torch.manual_seed(0)
    rows = [([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 5], [-1, 0, 0, 2, 1, 4]), ([0, 0, 1, 1, 2], [-1, 0, -1])]
    length, heads, kv_heads, dim = 14, 4, 2, 8
    query = torch.randn(2, heads, length, dim, requires_grad=True)
    key = torch.randn(2, kv_heads, length, dim, requires_grad=True)
    value = torch.randn(2, kv_heads, length, dim, requires_grad=True)
    mask = torch.stack([tree_attention_mask(ids, parents, length) for ids, parents in rows])[:, None]
    real = torch.tensor([[i < len(ids) for i in range(length)] for ids, _ in rows])
    weights = torch.randn(2, length, heads, dim) * real[:, :, None, None]  # padding outputs are never used

    def run(layout):
        for t in (query, key, value):
            t.grad = None
        module = torch.nn.Module()
        module.num_key_value_groups = heads // kv_heads
        out, _ = tree_attention_forward(module, query, key, value, mask, scaling=dim**-0.5, tree_layout=layout)
        (out * weights).sum().backward()
        return out * real[:, :, None, None], [t.grad.clone() for t in (query, key, value)]

    dense_out, dense_grads = run(None)  # SDPA over the dense mask
    tree_out, tree_grads = run(TreeLayout.from_segments(rows))
    assert torch.allclose(tree_out, dense_out, atol=1e-6)
    for a, b in zip(tree_grads, dense_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_row_of_single_examples_keeps_the_causal_per_step_layout(tiny_backbone, multi_turn_datasets):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    path = multi_turn_datasets / "planner" / "train.jsonl"
    packed = encode_role_dataset_packed(path, "planner", tok, 1024, examples_per_row=1, pack_length=1024)
    per_step = encode_role_dataset_packed(path, "planner", tok, 1024, examples_per_row=1, pack_length=1024)
    batch = PackedCollator(tok.pad_token_id)([packed.dataset[0], packed.dataset[1]])
    assert batch["attention_mask"].ndim == 2 and "position_ids" not in batch  # SDPA's causal path
    assert int(batch["real_tokens"].sum()) == per_step.example_lengths[0] + per_step.example_lengths[1]


@pytest.mark.parametrize("role", ROLES)
def test_packed_loss_and_gradients_equal_per_step_on_the_tiny_model(tiny_backbone, multi_turn_datasets, role):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_backbone), dtype=torch.float32)
    records = _records(multi_turn_datasets / role / "train.jsonl")
    stats = assert_packed_equals_per_step(model, tok, records, max_length=1024, pack_length=8192)
    assert (
        stats["fallbacks"] == 0 and stats["sequences"] == 1
    )  # both trajectories in one sequence (same docs: one root)
    if role in ("global", "planner"):  # the history is shared: far fewer tokens than per-step
        assert stats["packed_tokens"] < 0.6 * stats["per_step_tokens"]


def test_history_cut_and_pack_length_cut_keep_every_target_whole(tiny_backbone, multi_turn_datasets):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_backbone), dtype=torch.float32)
    records = _records(multi_turn_datasets / "planner" / "train.jsonl")
    cache: dict = {}
    full = [tree_example(tok, r["prompt"], r["target"], r["history_span"], 4096, r["id"], cache) for r in records]
    longest = max(ex.length for ex in full)
    # a per-example budget that cuts history from the left, and a packed budget that holds only a few examples
    max_length = longest - 60
    examples = [
        tree_example(tok, r["prompt"], r["target"], r["history_span"], max_length, r["id"], cache) for r in records
    ]
    assert any(ex.encoded.dropped_turns for ex in examples)
    pack_length = max_length + 100
    seqs = pack(examples, pack_length)
    assert len(seqs) > 2 and all(len(s.input_ids) <= pack_length for s in seqs)
    assert sum(s.examples for s in seqs) == len(examples)
    # each new sequence starts again from the docs: its first segment is the prompt head
    head = examples[0].path[0]
    assert all(tuple(s.input_ids[: len(head)]) == head and s.position_ids[0] == 0 for s in seqs)
    stats = assert_packed_equals_per_step(model, tok, records, max_length=max_length, pack_length=pack_length)
    assert stats["sequences"] == len(seqs)
    with pytest.raises(ValueError, match="does not fit"):
        pack(examples, max(ex.length for ex in examples) - 1)


def test_a_boundary_that_changes_tokenisation_falls_back_to_per_step_and_is_counted(tmp_path):
    tok = _word_tokenizer()
    # "Head:" glued to the history: as one string "Head:user:" is one (unknown) word, as segments two known words
    glued = {
        "id": "g#1",
        "trajectory_id": "g",
        "prompt": "Head:user: hi </s> TAIL ",
        "target": "T1",
        "history_span": [5, 18],
    }
    clean = {
        "id": "c#1",
        "trajectory_id": "c",
        "prompt": "Head: user: hi </s> TAIL ",
        "target": "T2",
        "history_span": [6, 19],
    }
    a = tree_example(tok, glued["prompt"], glued["target"], glued["history_span"], 64, glued["id"])
    b = tree_example(tok, clean["prompt"], clean["target"], clean["history_span"], 64, clean["id"])
    assert a.fallback and not b.fallback
    assert [i for seg in a.path for i in seg] + list(a.branch) == a.encoded.input_ids  # the per-step ids, unshared
    assert b.path == ((ID["Head:"],), (ID["user:"], ID["hi"], ID["</s>"])) and b.branch[0] == ID["TAIL"]
    (tmp_path / "planner").mkdir()
    (tmp_path / "planner" / "train.jsonl").write_text(
        "".join(json.dumps({**r, "role": "planner"}) + "\n" for r in (glued, clean))
    )
    enc = encode_role_dataset_packed(
        tmp_path / "planner" / "train.jsonl", "planner", tok, 64, examples_per_row=2, pack_length=128
    )
    assert enc.fallback_examples == 1 and enc.examples == 2 and len(enc.dataset) == 1


def test_packed_dataset_rows_hold_micro_batches_of_whole_trajectories(tiny_backbone, multi_turn_datasets):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    path = multi_turn_datasets / "planner" / "train.jsonl"
    per_step = encode_role_dataset(path, "planner", tok, 1024)
    packed = encode_role_dataset_packed(path, "planner", tok, 1024, examples_per_row=3, pack_length=4096)
    assert packed.examples == per_step.examples == len(_records(path))
    assert packed.target_tokens == per_step.target_tokens and packed.tokens == per_step.tokens
    assert len(packed.dataset) == -(-packed.examples // 3) and packed.packed_tokens < per_step.tokens
    batch = PackedCollator(tok.pad_token_id)([packed.dataset[0]])
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].ndim == 4
    assert int((batch["labels"] != IGNORE_INDEX).sum()) > 0


WORDS = ["<pad>", "<eos>", "Head:", "user:", "hi", "</s>", "TAIL", "T1", "T2"]
ID = {w: i for i, w in enumerate(WORDS)}


def _word_tokenizer():
    """One token per whitespace-separated word (unknown words: <pad>), `</s>` always its own word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(ID, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split("</s>", behavior="isolated")]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_training_steps_give_the_same_weights_with_packing_on_and_off(
    tiny_backbone, multi_turn_datasets, tmp_path, lora
):
    # every step holds the whole dataset (2 trajectories, 10 planner examples), so both engines take the same steps
    n = len(_records(multi_turn_datasets / "planner" / "train.jsonl"))
    overrides = {"per_device_batch_size": n // 2, "global_batch_size": n, "max_length": 1024}
    if lora:
        overrides["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    results = {}
    for packing in (True, False):
        config = load_config("tiny", packing=packing, **overrides)
        results[packing] = train_stage(
            "planner", config, multi_turn_datasets, tmp_path / f"p{packing}", tiny_backbone, tracking=False
        )
        assert results[packing].metrics["global_step"] == 2
    on, off, start = _weights(results[True].checkpoint), _weights(results[False].checkpoint), _weights(tiny_backbone)
    moved = [k for k in start if not torch.equal(start[k], off[k])]
    assert moved
    for k in start:  # the updates agree to float rounding (Adam's first steps amplify it: not rtol on weights)
        d_on, d_off = on[k] - start[k], off[k] - start[k]
        assert float((d_on - d_off).norm()) <= 1e-3 * float(d_off.norm()) + 1e-9, k
        assert torch.allclose(on[k], off[k], rtol=0, atol=1e-5), k
    assert results[True].metrics["data_examples"] == results[False].metrics["data_examples"] == n
    assert results[True].metrics["data_packed_tokens"] < results[False].metrics["data_tokens"]
    assert abs(results[True].metrics["train_loss"] - results[False].metrics["train_loss"]) < 1e-4


@pytest.mark.slow
def test_packed_equals_per_step_on_smollm2_with_real_bfcl_multi_turn_examples(smollm2_backbone):
    from umi.data.bfcl import import_category

    model_dir = smollm2_backbone
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trajectories = []
    for traj in import_category("multi_turn_base"):
        if isinstance(traj, Trajectory):
            trajectories.append(traj)
        if len(trajectories) == 1:
            break
    by_role: dict[str, list[dict]] = {r: [] for r in ROLES}
    for traj in trajectories:
        for role, ex in role_examples(traj, doc_style="compact"):
            by_role[role].append(ex)
    for role in ROLES:
        # three consecutive steps of one trajectory (not its first: those have no history to share)
        records = [r for r in by_role[role] if r["trajectory_id"] == trajectories[0].id]
        picked = records[1:4]
        assert len(picked) >= 2, role
        stats = assert_packed_equals_per_step(model, tok, picked, max_length=4096, pack_length=16384)
        assert stats["fallbacks"] == 0, role
        assert stats["per_step_tokens"] > stats["packed_tokens"], role


def test_packed_token_budget_counts_the_packed_tokens_and_buys_more_examples(tiny_backbone, multi_turn_datasets):
    # max_tokens is compute: packed, the shared docs and history count once, so the same budget holds more examples
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    path = multi_turn_datasets / "planner" / "train.jsonl"
    whole = encode_role_dataset_packed(path, "planner", tok, 1024, examples_per_row=3, pack_length=4096)
    budget = whole.packed_tokens // 2
    packed = encode_role_dataset_packed(
        path, "planner", tok, 1024, examples_per_row=3, pack_length=4096, max_tokens=budget
    )
    per_step = encode_role_dataset(path, "planner", tok, 1024, max_tokens=budget)
    assert packed.packed_tokens <= budget < whole.packed_tokens
    assert packed.examples > per_step.examples and per_step.tokens <= budget
