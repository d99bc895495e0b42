"""BFCL's executable multi-turn tool classes (file system, trading bot, travel booking, ...) as umi toolkits.

A `BFCLToolkit` is one episode's tools: fresh instances of the entry's `involved_classes`, each loaded with its part
of the entry's `initial_config` the way BFCL's executor loads them (`_load_scenario` on a deep copy; stateless classes
are not loaded), and their documented methods registered in a `ToolRegistry` under the function docs BFCL ships in
`bfcl_eval/data/multi_turn_func_doc/*.json`. State lives in the instances, so it carries across the turns of an entry
for as long as the toolkit lives; a new entry gets a new toolkit.

What is reused from bfcl-eval: the class -> module and class -> doc file maps, the stateless-class list and the docs.
What is not: BFCL's executor dispatches by rewriting the call string and `eval`-ing it; here a call is parsed with
`ast` (umi.tools.calls), bound to the method by name and validated against its schema before it runs.

`snapshot_state` turns the instances' public attributes (BFCL's state checker compares exactly those) into plain JSON
data, so two end states compare with `==` and can be stored; `state_differences` lists what differs.

Only the classes of the `multi_turn_*` categories are exposed (`SUPPORTED_CLASSES`): the web-search and memory
classes need packages bfcl-eval is installed without (html2text, overrides; see the Makefile).
"""

from __future__ import annotations

import copy
import datetime
import importlib
import json
import threading
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from bfcl_eval.constants.eval_config import MULTI_TURN_FUNC_DOC_PATH
from bfcl_eval.constants.executable_backend_config import (
    CLASS_FILE_PATH_MAPPING,
    MULTI_TURN_FUNC_DOC_FILE_MAPPING,
    STATELESS_CLASSES,
)

from umi.schema import ToolSpec
from umi.tools.calls import PythonCall, ToolCallError, parse_python_call
from umi.tools.registry import DEFAULT_TIMEOUT_S, Observation, ToolRegistry, json_schema_from_bfcl

__all__ = [
    "ARGUMENT_BOUNDS",
    "SUPPORTED_CLASSES",
    "ToolkitError",
    "BFCLToolkit",
    "func_docs",
    "tool_spec_from_bfcl",
    "tool_specs_for",
    "snapshot_state",
    "state_differences",
]

SUPPORTED_CLASSES: tuple[str, ...] = (
    "GorillaFileSystem",
    "MathAPI",
    "MessageAPI",
    "TwitterAPI",
    "TicketAPI",
    "TradingBot",
    "TravelAPI",
    "VehicleControlAPI",
)


# What a call may ask of the tools that compute (checked with the schema, not shown to the model): BFCL's own tests stay
# far inside these; a stranger's `power(10, 10**9)` or `logarithm(precision=10**7)` would compute for minutes.
_NUMBER_CAP = {"type": "number", "minimum": -1e100, "maximum": 1e100}
ARGUMENT_BOUNDS: dict[tuple[str, str], dict[str, Any]] = {
    ("MathAPI", "power"): {
        "properties": {"base": _NUMBER_CAP, "exponent": {"type": "number", "minimum": -1000, "maximum": 1000}}
    },
    ("MathAPI", "logarithm"): {"properties": {"precision": {"type": "integer", "minimum": 1, "maximum": 1000}}},
    ("MathAPI", "square_root"): {
        "properties": {"number": _NUMBER_CAP, "precision": {"type": "integer", "minimum": 1, "maximum": 1000}}
    },
    ("MathAPI", "round_number"): {
        "properties": {"decimal_places": {"type": "integer", "minimum": -400, "maximum": 400}}
    },
}
MPMATH_DEFAULT_DPS = 15


# BFCL's tool classes and bfcl_eval's checker keep state for the whole process (mpmath's precision, the checker's
# instances in its module's globals): a call or a check runs alone, so concurrent live rollouts (threads) do not
# see each other's precision or instances. Reentrant: the checker's own calls run inside a check.
BFCL_PROCESS_LOCK = threading.RLock()


def _reset_numeric_state() -> None:
    """MathAPI.logarithm sets mpmath's precision for the whole process: every call starts from the default again."""
    import mpmath

    mpmath.mp.dps = MPMATH_DEFAULT_DPS


class ToolkitError(ValueError):
    """A toolkit that cannot be set up (unknown class, bad initial config, clashing tool names)."""


def tool_spec_from_bfcl(doc: Mapping[str, Any]) -> ToolSpec:
    """A BFCL function doc -> ToolSpec: name and description as they are, parameters as JSON Schema
    (json_schema_from_bfcl: `dict` -> `object`, `float` -> `number`, `tuple` -> `array`, `any` unconstrained; all other
    keys kept). BFCL's `response` schema has no place in an OpenAI-style function schema and is left out."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ValueError("a function doc needs a non-empty 'name'")
    params = doc.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, Mapping):
        raise ValueError(f"{doc['name']}: 'parameters' must be an object")
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"{doc['name']}: 'description' must be text")
    return ToolSpec(name=doc["name"], description=description, parameters=json_schema_from_bfcl(params))


def _check_class(class_name: str) -> None:
    if class_name not in SUPPORTED_CLASSES:
        raise ToolkitError(
            f"unknown or unsupported BFCL class {class_name!r} (supported: {', '.join(SUPPORTED_CLASSES)})"
        )


@lru_cache(maxsize=None)
def _doc_lines(class_name: str) -> tuple[str, ...]:
    path = Path(MULTI_TURN_FUNC_DOC_PATH) / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    with path.open(encoding="utf-8") as f:
        return tuple(line for line in f if line.strip())


def func_docs(class_name: str) -> list[dict[str, Any]]:
    """The function docs BFCL ships for one class, in file order (fresh dicts on every call)."""
    _check_class(class_name)
    return [json.loads(line) for line in _doc_lines(class_name)]


@lru_cache(maxsize=None)
def _class_specs(class_name: str) -> tuple[ToolSpec, ...]:
    return tuple(tool_spec_from_bfcl(doc) for doc in func_docs(class_name))


def tool_specs_for(involved_classes: Iterable[str]) -> list[ToolSpec]:
    """The tools of an entry, in BFCL's order: classes as listed, each class's docs in file order."""
    specs: list[ToolSpec] = []
    seen: dict[str, str] = {}
    for class_name in involved_classes:
        _check_class(class_name)
        for spec in _class_specs(class_name):
            if spec.name in seen:
                raise ToolkitError(f"tool {spec.name!r} is defined by both {seen[spec.name]} and {class_name}")
            seen[spec.name] = class_name
            specs.append(spec.model_copy(deep=True))
    return specs


def _class(class_name: str) -> type:
    module = importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name])
    return getattr(module, class_name)


class BFCLToolkit:
    """One episode's BFCL tools: fresh instances set up from `initial_config`, their documented methods registered.

    `dispatch(name, arguments)` runs a call given as an arguments object (what the α-UMi caller writes);
    `execute(call_text)` runs a BFCL-style Python call string (parsed with `ast`, never eval'd). Both return an
    Observation and never raise.
    """

    def __init__(
        self,
        involved_classes: Iterable[str],
        initial_config: Mapping[str, Any] | None = None,
        *,
        long_context: bool = False,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
    ):
        self.involved_classes = list(involved_classes)
        if not self.involved_classes:
            raise ToolkitError("no involved classes")
        if initial_config is None:
            initial_config = {}
        if not isinstance(initial_config, Mapping):
            raise ToolkitError(f"initial_config must be an object, got {type(initial_config).__name__}")
        specs = tool_specs_for(self.involved_classes)  # checks the classes and name clashes first
        self.instances: dict[str, Any] = {}
        for class_name in self.involved_classes:
            instance = _class(class_name)()
            if class_name not in STATELESS_CLASSES:
                config = initial_config.get(class_name, {})
                if not isinstance(config, Mapping):
                    raise ToolkitError(f"initial_config[{class_name!r}] must be an object")
                try:
                    instance._load_scenario(copy.deepcopy(dict(config)), long_context=long_context)
                except Exception as e:  # noqa: BLE001 -- a scenario BFCL's class cannot load
                    raise ToolkitError(f"{class_name}: the initial config cannot be loaded: {e!r}") from None
            self.instances[class_name] = instance
        self.registry = ToolRegistry(timeout_s=timeout_s)
        owner = {spec.name: class_name for class_name in self.involved_classes for spec in _class_specs(class_name)}
        for spec in specs:
            method = getattr(self.instances[owner[spec.name]], spec.name, None)
            if method is None or not callable(method):
                raise ToolkitError(f"{owner[spec.name]} documents {spec.name!r} but has no such method")
            self.registry.register(spec, method, bounds=ARGUMENT_BOUNDS.get((owner[spec.name], spec.name)))

    @property
    def specs(self) -> list[ToolSpec]:
        return self.registry.specs

    def dispatch(self, name: str, arguments: Mapping[str, Any] | None = None, *, validate: bool = True) -> Observation:
        with BFCL_PROCESS_LOCK:
            _reset_numeric_state()
            return self.registry.dispatch(name, arguments, validate=validate)

    def dispatch_call(self, call: PythonCall) -> Observation:
        with BFCL_PROCESS_LOCK:
            _reset_numeric_state()
            return self.registry.dispatch_call(call)

    def execute(self, call_text: str) -> Observation:
        with BFCL_PROCESS_LOCK:
            _reset_numeric_state()
            return self.registry.dispatch_text(call_text)

    def bind(self, call: PythonCall) -> dict[str, Any]:
        """The call's arguments as one object (positional ones named); ToolCallError if they do not fit."""
        return self.registry.bind_arguments(call.name, call.args, call.kwargs)

    def parse(self, call_text: str) -> tuple[str, dict[str, Any]]:
        """A BFCL call string -> (tool name, arguments object); ToolCallError if it cannot be read or bound."""
        call = parse_python_call(call_text)
        if call.name not in self.registry:
            raise ToolCallError(f"unknown tool {call.name!r}", call_text)
        return call.name, self.bind(call)

    def snapshot(self) -> dict[str, Any]:
        return snapshot_state(self.instances)


# --- state snapshots -------------------------------------------------------------------------------------------------
_ANCESTOR = "<ancestor>"  # a reference back up the tree (a directory's parent): shown, not followed


def _plain(value: Any, path: tuple[int, ...]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if id(value) in path:
        return _ANCESTOR
    inner = path + (id(value),)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, inner) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, inner) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_plain(v, inner) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "__dict__"):
        public = {k: _plain(v, inner) for k, v in vars(value).items() if not k.startswith("_")}
        return {"__class__": type(value).__name__, **public}
    return repr(value)


def snapshot_state(instances: Mapping[str, Any]) -> dict[str, Any]:
    """The public attributes of each tool instance as plain JSON data: {class name: {attribute: value}}.

    Private attributes (a leading `_`) are left out, as BFCL's state checker leaves them out; objects inside become
    dicts of their public attributes with a `__class__` key; a reference back to an enclosing object (a directory's
    parent) becomes "<ancestor>". JSON-serialisable, so end states can be stored and compared with `==`."""
    return {
        name: {k: _plain(v, (id(inst),)) for k, v in vars(inst).items() if not k.startswith("_")}
        for name, inst in instances.items()
    }


def state_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{class: {attribute: {"expected": ..., "actual": ...}}} for every attribute that differs (missing ones too)."""
    diffs: dict[str, dict[str, Any]] = {}
    for name in list(expected) + [n for n in actual if n not in expected]:
        want, got = expected.get(name, {}), actual.get(name, {})
        for attr in list(want) + [a for a in got if a not in want]:
            if want.get(attr) != got.get(attr) or (attr in want) != (attr in got):
                diffs.setdefault(name, {})[attr] = {"expected": want.get(attr), "actual": got.get(attr)}
    return diffs
