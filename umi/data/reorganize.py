"""Trajectories -> the four role datasets: global (the backbone's single-LLM view), planner, caller, summarizer.

Which step becomes which role example is the table of umi.data.examples (`trajectory_examples`); this module writes
the same lines fast, byte for byte (tests/data/test_reorganize.py checks it on real data).

Output (the role-dataset contract): `<out>/<role>/<split>.jsonl`, one example a line
`{"id", "trajectory_id", "role", "prompt", "target", "history_span"}` (compact JSON, UTF-8), split by umi.data.splits
on the trajectory's split key; `<out>/rejects.jsonl` lists every trajectory that could not be converted (id, reason);
`<out>/stats.json` the counts; `<out>/layout.json` how the folder was written (layout, prompt format, and the split
rule: fractions, least test shares, salt and group rule, which every checkpoint trained on it records). With `layout="trajectories"` the folder
holds `<out>/trajectories/<split>.jsonl` instead and `iter_role_examples` renders the same examples when read.

Deliberate differences from the reference's reorganisation (tests/data/test_reorganize.py names each):
- the global give-up example is built from its own history (the reference reuses the previous step's input);
- prompt layout as umi.prompts documents (every turn ends in `</s>`, observations included, no `system:` prefix).

Speed: prompts share the tool doc and a growing history, so the output is mostly the same text again and again.
Each trajectory's doc and history turns are rendered and JSON-escaped once; an example line is then a list of byte
pieces (escaped head, a slice of the escaped history, tail, target) that the kernel gathers with writev, so nothing
is escaped or copied per example in Python. Streaming: the input is read in chunks of lines and written as each chunk
is done, so memory does not grow with the input. `workers > 1` renders chunks in a process pool (a bounded window of
chunks in flight); workers spool their bytes to RAM-backed files that the parent appends with sendfile, in input
order, so the output bytes are the same for any number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import ValidationError

from umi import prompts
from umi.data.examples import check_decisions
from umi.data.importing import TooManyRejects, validation_problem
from umi.data.splits import DEFAULT_FRACTIONS, SPLITS, Split, split_of, split_rule
from umi.prompts import TEMPLATES, DocStyle
from umi.schema import RecordError, Trajectory
from umi.vocabulary import DATASET_LAYOUT, ROLES

try:  # orjson escapes several times faster; the stdlib fallback gives the same bytes
    import orjson

    def _esc(text: str) -> bytes:
        """`text` as the inside of a JSON string literal (UTF-8, only what JSON requires escaped)."""
        return orjson.dumps(text)[1:-1]

except ImportError:  # pragma: no cover - orjson is in the lock file

    def _esc(text: str) -> bytes:
        text.encode("utf-8")  # refuse lone surrogates as orjson does (UnicodeEncodeError is a ValueError)
        return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")


Layout = Literal["examples", "trajectories"]
TRAJECTORIES = "trajectories"  # the folder of the `trajectories` layout
__all__ = [
    "ReorganizeOptions",
    "ReorganizeStats",
    "TooManyRejects",
    "encode_examples",
    "example_counts",
    "iter_role_examples",
    "parse_line",
    "read_examples",
    "reorganize",
    "role_examples",
]


@dataclass(frozen=True)
class ReorganizeOptions:
    """doc_style: tool docs as the reference's JSON line per tool, or the compact one-liner for small budgets.
    observation_limit: characters of each observation kept in histories (None: no cut).
    max_reject_share: the run fails (TooManyRejects, after writing everything) past this share of rejected
    trajectories. split_fractions: train/dev/test shares (None: umi.data.splits defaults).
    layout: `examples` writes every example's prompt in full (the role-dataset contract); `trajectories` writes
    each split's validated trajectories once and leaves the examples to `iter_role_examples`, which renders them
    on the fly, byte for byte the same (a sixth of the bytes; see benchmarks/reorganize.py).
    workers: processes rendering examples (1: in this process). chunk_lines: trajectories per unit of work."""

    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE
    observation_limit: int | None = prompts.OBSERVATION_LIMIT
    layout: Layout = "examples"
    max_reject_share: float = 0.0
    split_fractions: dict[str, float] | None = None
    workers: int = 1
    chunk_lines: int = 64

    def __post_init__(self) -> None:
        if self.layout not in ("examples", "trajectories"):
            raise ValueError(f"layout must be 'examples' or 'trajectories', got {self.layout!r}")
        if self.doc_style not in ("reference", "compact"):
            raise ValueError(f"doc_style must be 'reference' or 'compact', got {self.doc_style!r}")
        if self.observation_limit is not None and self.observation_limit < 0:
            raise ValueError("observation_limit must be >= 0 or None")
        if not 0.0 <= self.max_reject_share <= 1.0:
            raise ValueError("max_reject_share must be within [0, 1]")
        if self.workers < 1 or self.chunk_lines < 1:
            raise ValueError("workers and chunk_lines must be >= 1")
        split_of("probe", self.fractions)  # validates the fractions

    @property
    def fractions(self) -> dict[Split, float]:
        return dict(self.split_fractions) if self.split_fractions is not None else dict(DEFAULT_FRACTIONS)  # type: ignore[arg-type]


@dataclass
class ReorganizeStats:
    inputs: list[str]
    out_dir: str
    trajectories: int = 0  # converted
    rejected: int = 0
    examples: dict[str, dict[str, int]] = field(default_factory=lambda: {r: {s: 0 for s in SPLITS} for r in ROLES})
    trajectories_per_split: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    bytes_written: int = 0
    seconds: float = 0.0
    rejects_path: str | None = None

    @property
    def total(self) -> int:
        return self.trajectories + self.rejected

    @property
    def reject_share(self) -> float:
        return self.rejected / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reject_share"] = self.reject_share
        return d


# --- one trajectory -> examples ---------------------------------------------------------------------------------------
def _template(template: str) -> tuple[str, str]:
    head, sep, tail = template.partition("{history}")
    if not sep:
        raise ValueError("a role prompt template must contain {history}")
    return head, tail


_PLANNER = _template(TEMPLATES["planner"])
_CALLER = _template(TEMPLATES["caller"])
_SUMMARIZER = _template(TEMPLATES["summarizer"])
_GLOBAL = _template(TEMPLATES["global"])


def _global_units(traj: Trajectory) -> list[tuple[int, int]]:
    """Step ranges that make one turn in the single-LLM view: an assistant step with the call or answer it led to."""
    steps = traj.steps
    units = []
    i = 0
    while i < len(steps):
        s = steps[i]
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if (
            s.role == "assistant"
            and nxt is not None
            and (
                (s.decision == "caller" and nxt.role == "caller")
                or (s.decision == "conclusion" and nxt.role == "conclusion")
            )
        ):
            units.append((i, i + 2))
            i += 2
        else:
            units.append((i, i + 1))
            i += 1
    return units


class _EscapedHistory:
    """A history rendered once and JSON-escaped once; any prefix of whole turns is then a zero-copy slice.

    JSON escaping works character by character, so escape(a + b) == escape(a) + escape(b): an example's prompt
    can be written as escaped pieces (head, history prefix, tail) without escaping the shared parts again.
    """

    def __init__(self, turns: list[str]):
        escaped = [_esc(t) for t in turns]
        self.data = memoryview(b"".join(escaped))
        self.chars = [0]  # chars[k]: length of the first k turns, in characters (what history_span counts)
        self.bytes = [0]  # the same in escaped bytes
        for t, e in zip(turns, escaped, strict=True):
            self.chars.append(self.chars[-1] + len(t))
            self.bytes.append(self.bytes[-1] + len(e))

    def prefix(self, k: int) -> tuple[memoryview, int]:
        """The first k turns: (escaped bytes, length in characters)."""
        return self.data[: self.bytes[k]], self.chars[k]


class _LineParts:
    """The bytes one trajectory's example lines share, escaped once: the id's start, per role the fields from the
    id's end to the prompt's head, and the tails that do not depend on the step. `example` adds an example's own
    step index, history slice, tail and target."""

    def __init__(self, trajectory_id: str, doc: str, tool_names: str):
        self.fields = {"doc": doc, "tool_names": tool_names}
        heads = {
            "global": _GLOBAL[0].format(**self.fields),
            "planner": _PLANNER[0].format(**self.fields),
            "caller": _CALLER[0].format(**self.fields),
            "summarizer": _SUMMARIZER[0].format(**self.fields),
        }
        self.fixed_tails = {
            "global": _esc(_GLOBAL[1].format(**self.fields)),
            "planner": _esc(_PLANNER[1].format(**self.fields)),
            "summarizer": _esc(_SUMMARIZER[1].format(**self.fields)),
        }
        esc_tid = _esc(trajectory_id)
        self.id_start = b'{"id":"' + esc_tid + b"#"
        # per role: everything from the end of the id to the start of the history
        self.mids = {
            role: b'","trajectory_id":"' + esc_tid + b'","role":"' + role.encode() + b'","prompt":"' + _esc(head)
            for role, head in heads.items()
        }
        self.head_chars = {role: len(head) for role, head in heads.items()}

    def caller_tail(self, thought: str) -> bytes:
        """The caller's tail holds the planner's thought of the step: the one tail that is not shared."""
        return _esc(_CALLER[1].format(thought=thought, **self.fields))

    def example(self, role: str, i: int, history: tuple[memoryview, int], tail: bytes, target: str) -> tuple[str, list]:
        """(role, the pieces of its line) for the example of step `i`."""
        hist, hist_chars = history
        start = self.head_chars[role]
        span = f'","history_span":[{start},{start + hist_chars}]}}\n'.encode()
        return role, [self.id_start, str(i).encode(), self.mids[role], hist, tail, b'","target":"', _esc(target), span]


def _single_llm_history(traj: Trajectory, observation_limit: int | None) -> tuple[_EscapedHistory, dict[int, int]]:
    """The single-LLM view's history, which merges an assistant step with the call or answer it led to into one turn,
    and for each step where such a unit starts the number of turns before it."""
    turns: list[str] = []
    turns_before: dict[int, int] = {}
    for start, stop in _global_units(traj):
        turns_before[start] = len(turns)
        turns.extend(prompts.history_turns(traj.steps[start:stop], "global", observation_limit))
    return _EscapedHistory(turns), turns_before


def encode_examples(
    traj: Trajectory,
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
    observation_limit: int | None = prompts.OBSERVATION_LIMIT,
) -> list[tuple[str, list]]:
    """All (role, pieces) of one trajectory in step order; b"".join(pieces) is the example's JSONL line.

    Raises RecordError when a decision has no matching step, the trajectory has no assistant step, or its text
    cannot be written as UTF-8."""
    check_decisions(traj)
    steps = traj.steps
    n = len(steps)
    tid = traj.id
    out: list[tuple[str, list]] = []
    try:
        doc = prompts.render_tool_docs(traj.tools, doc_style)
        names = prompts.tool_names(traj.tools)
        turns = prompts.history_turns(steps, "roles", observation_limit)
        if len(turns) != n:
            raise RecordError(tid, "history rendering gave a different number of turns than steps")
        roles = _EscapedHistory(turns)
        single, single_turns_before = _single_llm_history(traj, observation_limit)
        parts = _LineParts(tid, doc, names)
        tails = parts.fixed_tails
        for i, s in enumerate(steps):
            if s.role != "assistant":
                continue
            thought, decision = s.content, s.decision
            nxt = steps[i + 1] if i + 1 < n else None
            if decision == "caller":
                single_target = prompts.global_target(thought, call=nxt)
            elif decision == "conclusion":
                single_target = prompts.global_target(thought, answer=nxt.content)  # type: ignore[union-attr]
            else:
                single_target = prompts.global_target(thought, give_up=True)
            global_history = single.prefix(single_turns_before[i])
            out.append(parts.example("global", i, global_history, tails["global"], single_target))
            planner_output = prompts.planner_target(thought, decision)  # type: ignore[arg-type]
            out.append(parts.example("planner", i, roles.prefix(i), tails["planner"], planner_output))
            if decision == "caller":
                tail = parts.caller_tail(planner_output)
                target = prompts.caller_target(nxt.tool_name or "", nxt.arguments_json)  # type: ignore[union-attr]
                out.append(parts.example("caller", i, roles.prefix(i + 1), tail, target))
            elif decision == "conclusion":
                target = prompts.summarizer_target(nxt.content)  # type: ignore[union-attr]
                out.append(parts.example("summarizer", i, roles.prefix(i + 1), tails["summarizer"], target))
    except (TypeError, UnicodeEncodeError) as e:  # orjson refuses lone surrogates with a TypeError
        raise RecordError(tid, f"text that cannot be written as UTF-8: {e}") from None
    if not out:
        raise RecordError(tid, "no assistant steps, so no examples")
    return out


def role_examples(
    traj: Trajectory,
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
    observation_limit: int | None = prompts.OBSERVATION_LIMIT,
) -> list[tuple[str, dict[str, Any]]]:
    """All (role, example) pairs of one trajectory, in step order, as the dicts the role files hold."""
    return [
        (role, json.loads(b"".join(pieces))) for role, pieces in encode_examples(traj, doc_style, observation_limit)
    ]


# --- a chunk of JSONL lines -> encoded examples ---------------------------------------------------------------------
@dataclass
class _Rendered:
    """One trajectory's encoded examples: per role the pieces of its lines, or (offset, length) in a spool file."""

    trajectory_id: str
    split: str
    blobs: dict[str, Any]
    counts: dict[str, int]


def parse_line(line: bytes | str, where: str) -> Trajectory:
    """One JSONL line -> Trajectory; RecordError naming the trajectory id (or `where`, if there is none)."""
    try:
        return Trajectory.model_validate_json(line)
    except ValidationError as e:
        record_id = where
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as je:
            raise RecordError(where, f"invalid JSON: {je}") from None
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
            record_id = raw["id"]
        raise RecordError(record_id, validation_problem(e)) from None


def example_counts(traj: Trajectory) -> dict[str, int]:
    """How many examples of each role a trajectory gives (RecordError where encode_examples would reject it)."""
    check_decisions(traj)
    decisions = [s.decision for s in traj.steps if s.role == "assistant"]
    if not decisions:
        raise RecordError(traj.id, "no assistant steps, so no examples")
    counts = {"global": len(decisions), "planner": len(decisions)}
    for role, decision in (("caller", "caller"), ("summarizer", "conclusion")):
        if decision in decisions:
            counts[role] = decisions.count(decision)
    return counts


def _render_chunk(
    lines: Sequence[tuple[str, bytes]],
    doc_style: DocStyle,
    observation_limit: int | None,
    fractions: dict,
    layout: Layout = "examples",
) -> list[_Rendered | RecordError]:
    results: list[_Rendered | RecordError] = []
    for where, line in lines:
        try:
            traj = parse_line(line, where)
            split = split_of(traj.split_key, fractions)
            if layout == TRAJECTORIES:
                text = line if line.endswith(b"\n") else line + b"\n"
                results.append(_Rendered(traj.id, split, {TRAJECTORIES: [text]}, example_counts(traj)))
                continue
            pieces: dict[str, list] = {}
            counts: dict[str, int] = {}
            for role, example in encode_examples(traj, doc_style, observation_limit):
                pieces.setdefault(role, []).extend(example)
                counts[role] = counts.get(role, 0) + 1
            results.append(_Rendered(traj.id, split, pieces, counts))
        except RecordError as e:
            results.append(e)
    return results


_IOV_MAX = 1024  # writev's limit on pieces per call (Linux)


def _writev_all(fd: int, pieces: list) -> int:
    """Write all pieces in order with as few system calls as writev allows; returns the bytes written."""
    total = 0
    for k in range(0, len(pieces), _IOV_MAX):
        batch = pieces[k : k + _IOV_MAX]
        size = sum(len(p) for p in batch)
        done = os.writev(fd, batch)
        if done < size:  # a partial write (rare for regular files): finish it piece by piece
            rest = memoryview(b"".join(batch))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        total += size
    return total


def _worker_chunk(args: tuple) -> tuple[str, list[_Rendered | RecordError]]:
    """Render a chunk in a pool worker and spool its bytes to a file, grouped by (role, split), so the parent can
    copy them into the outputs in the kernel (sendfile) instead of receiving gigabytes through a pipe."""
    lines, doc_style, observation_limit, fractions, layout, spool_dir = args
    results = _render_chunk(lines, doc_style, observation_limit, fractions, layout)
    order = sorted({(role, r.split) for r in results if isinstance(r, _Rendered) for role in r.blobs})
    fd, path = tempfile.mkstemp(dir=spool_dir, prefix="chunk-")
    try:
        offset = 0
        for role, split in order:
            for r in results:
                if isinstance(r, _Rendered) and r.split == split and role in r.blobs:
                    written = _writev_all(fd, r.blobs[role])
                    r.blobs[role] = (offset, written)
                    offset += written
    finally:
        os.close(fd)
    return path, results


# --- files ------------------------------------------------------------------------------------------------------------
def input_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """JSONL files to read: files as given; folders give every *.jsonl below them (not *.rejects.jsonl), sorted."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*.jsonl") if not f.name.endswith(".rejects.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no trajectories at {p}")
    if not files:
        raise FileNotFoundError(f"no *.jsonl trajectory files in {', '.join(map(str, items))}")
    return files


def _chunks(files: list[Path], size: int) -> Iterator[list[tuple[str, bytes]]]:
    chunk: list[tuple[str, bytes]] = []
    for path in files:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                chunk.append((f"{path.name}:{lineno}", line))
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def _spool_dir(out: Path) -> str:
    """Scratch space for chunks in flight: RAM-backed /dev/shm when there is one (bounded by the window of chunks)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else out
    return tempfile.mkdtemp(prefix="umi-reorganize-", dir=base)


def _results(
    chunks: Iterator[list], options: ReorganizeOptions, spool: str | None
) -> Iterator[tuple[str | None, list[_Rendered | RecordError]]]:
    fixed = (options.doc_style, options.observation_limit, options.fractions, options.layout)
    if options.workers == 1 or spool is None:
        for chunk in chunks:
            yield None, _render_chunk(chunk, *fixed)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    window = 2 * options.workers + 1  # chunks in flight: bounds memory, keeps every worker busy
    with ctx.Pool(options.workers) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_worker_chunk, ((chunk, *fixed, spool),)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _copy_range(out_fd: int, in_fd: int, offset: int, length: int) -> None:
    while length > 0:
        sent = os.sendfile(out_fd, in_fd, offset, length)
        if sent == 0:
            raise OSError("sendfile copied nothing: the spool file is shorter than expected")
        offset += sent
        length -= sent


def reorganize(
    input_paths: str | Path | Iterable[str | Path], out_dir: str | Path, options: ReorganizeOptions | None = None
) -> ReorganizeStats:
    """Write the role datasets for the trajectories in `input_paths` (JSONL files or folders) under `out_dir`.

    Every trajectory that cannot be converted goes to `<out_dir>/rejects.jsonl` with its id and reason. Raises
    TooManyRejects, after writing everything, when the reject share exceeds `options.max_reject_share`.
    """
    options = options or ReorganizeOptions()
    started = time.perf_counter()
    files = input_files(input_paths)
    out = Path(out_dir)
    stats = ReorganizeStats(inputs=[str(f) for f in files], out_dir=str(out))
    fds = _open_outputs(out, options.layout)
    _write_layout(out, options)
    rejects_path = out / "rejects.jsonl"
    rejects = rejects_path.open("w", encoding="utf-8", newline="\n")
    spool = _spool_dir(out) if options.workers > 1 else None
    seen: set[str] = set()
    try:
        for spool_file, results in _results(_chunks(files, options.chunk_lines), options, spool):
            pieces = _tally(results, seen, stats, rejects)
            _append(pieces, spool_file, fds, stats)
    finally:
        for fd in fds.values():
            os.close(fd)
        rejects.close()
        if spool:
            shutil.rmtree(spool, ignore_errors=True)
    if stats.rejected:
        stats.rejects_path = str(rejects_path)
    else:
        rejects_path.unlink()
    stats.seconds = time.perf_counter() - started
    # no timings in the file: the folder is a DVC output and must be the same bytes on every run
    counts = {k: v for k, v in stats.to_dict().items() if k != "seconds"}
    (out / "stats.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    if stats.reject_share > options.max_reject_share:
        raise TooManyRejects(
            f"{stats.rejected} of {stats.total} trajectories rejected ({stats.reject_share:.1%} > "
            f"{options.max_reject_share:.1%} allowed); see {rejects_path}"
        )
    return stats


def _open_outputs(out: Path, layout: Layout) -> dict[tuple[str, str], int]:
    """(folder, split) -> the emptied output file, open for writing, of each of the layout's folders."""
    for folder in ROLES + (TRAJECTORIES,):  # only the chosen layout's folders: no stale files from the other one
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
    fds: dict[tuple[str, str], int] = {}
    for folder in ROLES if layout == "examples" else (TRAJECTORIES,):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            path = out / folder / f"{split}.jsonl"
            fds[folder, split] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    return fds


def _write_layout(out: Path, options: ReorganizeOptions) -> None:
    manifest = {
        "layout": options.layout,
        "doc_style": options.doc_style,
        "observation_limit": options.observation_limit,
        "split": split_rule(options.fractions),  # the split travels with the data (umi.data.splits.split_rule)
    }
    (out / DATASET_LAYOUT).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _tally(results: list[_Rendered | RecordError], seen: set[str], stats: ReorganizeStats, rejects: TextIO) -> dict:
    """Count a chunk's results and write its rejects (a trajectory id seen before is one); returns, per output file,
    the pieces to append in order: bytes, or (offset, length) ranges of the chunk's spool file."""
    pieces: dict[tuple[str, str], list] = {}
    for r in results:
        if isinstance(r, _Rendered) and r.trajectory_id in seen:
            r = RecordError(r.trajectory_id, "duplicate trajectory id (its first occurrence was kept)")
        if isinstance(r, RecordError):
            stats.rejected += 1
            rejects.write(json.dumps({"id": r.record_id, "reason": r.reason}, ensure_ascii=False) + "\n")
            continue
        seen.add(r.trajectory_id)
        stats.trajectories += 1
        stats.trajectories_per_split[r.split] += 1
        for role, count in r.counts.items():
            stats.examples[role][r.split] += count
        for folder, blob in r.blobs.items():
            bucket = pieces.setdefault((folder, r.split), [])
            if isinstance(blob, list):  # rendered here: the pieces of the lines
                bucket.extend(blob)
            elif bucket and bucket[-1][0] + bucket[-1][1] == blob[0]:
                bucket[-1] = (bucket[-1][0], bucket[-1][1] + blob[1])  # contiguous in the spool: one copy
            else:
                bucket.append(blob)
    return pieces


def _append(pieces: dict, spool_file: str | None, fds: dict[tuple[str, str], int], stats: ReorganizeStats) -> None:
    """Append a chunk's pieces to the output files (from its spool file, which is then removed, when it has one)."""
    in_fd = os.open(spool_file, os.O_RDONLY) if spool_file else None
    try:
        for key, bucket in pieces.items():
            if in_fd is None:
                stats.bytes_written += _writev_all(fds[key], bucket)
                continue
            for offset, length in bucket:
                _copy_range(fds[key], in_fd, offset, length)
                stats.bytes_written += length
    finally:
        if in_fd is not None:
            os.close(in_fd)
        if spool_file:
            os.unlink(spool_file)


def read_examples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the examples of one role/split file."""
    with Path(path).open("rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def iter_role_examples(dataset_dir: str | Path, role: str, split: str) -> Iterator[dict[str, Any]]:
    """Stream one role/split's examples from a reorganised folder, whichever layout it was written in."""
    if role not in ROLES or split not in SPLITS:
        raise ValueError(f"role must be one of {ROLES} and split one of {SPLITS}")
    root = Path(dataset_dir)
    manifest_path = root / DATASET_LAYOUT
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    if manifest.get("layout", "examples") == "examples":
        yield from read_examples(root / role / f"{split}.jsonl")
        return
    path = root / TRAJECTORIES / f"{split}.jsonl"
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            traj = parse_line(line, f"{path.name}:{lineno}")
            for r, pieces in encode_examples(traj, manifest["doc_style"], manifest["observation_limit"]):
                if r == role:
                    yield json.loads(b"".join(pieces))
