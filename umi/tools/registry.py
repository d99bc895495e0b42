"""A tool registry: OpenAI-style function schemas bound to Python callables, and a dispatcher that never raises.

`ToolRegistry.dispatch(name, arguments)` checks the name, validates the arguments against the tool's JSON Schema
(`jsonschema`, Draft 2020-12), calls the function (in a worker thread, with a timeout) and turns the outcome into an
`Observation`. Every failure -- unknown tool, schema violation, unbindable arguments, an exception in the tool, a
timeout -- is an observation with `ok=False` and an `error_kind`, so an agent loop can show it to the planner.

Result text: a string is used as it is, a dict becomes `json.dumps(dict)` (its `str()` if that fails), anything else
`str(value)`, and a tool exception reads `Error during execution: <message>`. These are BFCL's executor's rules, so
observations from BFCL's tool classes are the same text BFCL itself produces (tests/data/test_bfcl_import.py).

Schemas: BFCL writes Python-ish types (`dict`, `float`, `tuple`, `any`, ...). `json_schema_from_bfcl` maps them to
JSON Schema (`object`, `number`, `array`, no constraint) and leaves every other key as it is; registration applies it,
so a BFCL doc and a JSON Schema can both be registered. Tuple values are validated as arrays.

Schemas from strangers (`check_untrusted_schema`, applied by the service to client tool schemas): only local `#...`
references, no regular expressions (`pattern`, `patternProperties`, `format: regex`: Python's `re` backtracks, and a
client pattern like `^(a+)+$` runs for minutes), and caps on size, depth and node count. Every validator resolves
references through a registry that refuses every retrieval, so no schema -- trusted or not -- makes this process read
a file or a URL; a reference it cannot resolve, like anything else validation raises, is reported as invalid
arguments, never as an exception.

Timeouts: a Python thread cannot be killed. A call past its timeout is reported (error_kind "timeout") and left
running in a daemon thread; a stateful toolkit's state is not to be trusted after that.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry
from referencing.exceptions import NoSuchResource

from umi.schema import ToolSpec
from umi.tools.calls import PythonCall, ToolCallError, parse_python_call, to_json_value

__all__ = [
    "ErrorKind",
    "Observation",
    "RegisteredTool",
    "ToolRegistry",
    "json_schema_from_bfcl",
    "result_text",
    "DEFAULT_TIMEOUT_S",
    "SchemaLimits",
    "UnsafeSchema",
    "check_untrusted_schema",
]

DEFAULT_TIMEOUT_S = 10.0

ErrorKind = Literal[
    "invalid_call",  # the call text could not be parsed (dispatch_text only)
    "unknown_tool",  # no tool of that name is registered
    "invalid_arguments",  # arguments violate the schema, or cannot be bound to the function's parameters
    "tool_error",  # the tool raised
    "timeout",  # the tool did not return in time
]

# BFCL's Python-ish type names -> JSON Schema; None = no type constraint ("any")
_TYPE_MAP: dict[str, str | None] = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "list": "array",
    "bool": "boolean",
    "int": "integer",
    "str": "string",
    "any": None,
    "object": "object",
    "number": "number",
    "array": "array",
    "boolean": "boolean",
    "integer": "integer",
    "string": "string",
    "null": "null",
}
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions")


def _json_type(kind: Any) -> str | None:
    if not isinstance(kind, str) or kind not in _TYPE_MAP:
        raise ValueError(f"unknown parameter type {kind!r}")
    return _TYPE_MAP[kind]


def json_schema_from_bfcl(schema: Mapping[str, Any]) -> dict[str, Any]:
    """BFCL's parameter schema -> JSON Schema: types mapped, subschemas recursed, every other key kept as it is.

    Idempotent on JSON Schema. Raises ValueError on a type name it does not know."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"a schema must be an object, got {type(schema).__name__}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if isinstance(value, list):
                kinds = [_json_type(v) for v in value]
                if None in kinds:  # "any" in a union: no constraint at all
                    continue
                out[key] = kinds
            else:
                kind = _json_type(value)
                if kind is not None:
                    out[key] = kind
        elif key in _SUBSCHEMA_KEYS and isinstance(value, Mapping):
            out[key] = json_schema_from_bfcl(value)
        elif key in _SUBSCHEMA_LIST_KEYS and isinstance(value, list):
            out[key] = [json_schema_from_bfcl(v) if isinstance(v, Mapping) else v for v in value]
        elif key in _SUBSCHEMA_MAP_KEYS and isinstance(value, Mapping):
            out[key] = {k: json_schema_from_bfcl(v) if isinstance(v, Mapping) else v for k, v in value.items()}
        else:
            out[key] = copy.deepcopy(value)
    return out


def result_text(value: Any) -> str:
    """A tool's return value as observation text (BFCL's executor's rules, see the module doc)."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except (TypeError, ValueError):  # objects inside, or circular
            return str(value)
    return str(value)


@dataclass(frozen=True)
class Observation:
    """What a tool call produced. `ok` is False for every failure, with `error_kind` saying which; `text` is what the
    planner reads. `value` is the tool's raw return value (None on failure); it is not part of equality."""

    ok: bool
    text: str
    tool_name: str
    error_kind: ErrorKind | None = None
    value: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def failure(cls, tool_name: str, kind: ErrorKind, text: str) -> "Observation":
        return cls(ok=False, text=text, tool_name=tool_name, error_kind=kind)


@dataclass(frozen=True)
class RegisteredTool:
    spec: ToolSpec  # as registered (what the model reads)
    function: Callable[..., Any]
    validator: Draft202012Validator  # over the JSON-Schema form of spec.parameters
    signature: inspect.Signature | None


# --- schemas from strangers ------------------------------------------------------------------------------------------
class UnsafeSchema(ValueError):
    """A schema this process will not evaluate: a non-local reference, a regular expression, or over a cap."""


@dataclass(frozen=True)
class SchemaLimits:
    """Caps on one tool's parameter schema. ToolBench's largest real schema is ~2 KB, 6 levels deep."""

    max_bytes: int = 16_000  # its JSON text
    max_depth: int = 16  # nested objects / arrays
    max_nodes: int = 2_000  # objects, arrays and values in all


def _refuse_retrieval(uri: str):
    # referencing calls this for any URI not in the registry: a remote or file $ref, a $schema / $id elsewhere
    raise NoSuchResource(ref=uri)


_OWN_SCHEMAS = SchemaLimits(max_bytes=10**9, max_depth=900, max_nodes=10**9)  # registered: still only local refs
_LOCAL_ONLY = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
_REF_KEYS = ("$ref", "$dynamicRef")
_NAME_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")  # keys there are names


def check_untrusted_schema(
    schema: Any, limits: SchemaLimits = SchemaLimits(), where: str = "parameters", *, allow_regex: bool = False
) -> None:
    """UnsafeSchema (saying what and where) unless `schema` keeps to `limits`, refers only inside itself (`#...`) and
    has no regular expression (unless `allow_regex`, for schemas of our own). The walk covers the whole tree, not only schema positions: a `#/...` pointer can make
    any part of the document a schema."""
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError, RecursionError) as e:
        raise UnsafeSchema(f"{where} is not JSON: {e}") from None
    if size > limits.max_bytes:
        raise UnsafeSchema(f"{where} is {size} bytes of JSON, over this service's limit of {limits.max_bytes}")
    nodes = 0
    stack: list[tuple[Any, str, int, bool]] = [(schema, where, 1, False)]
    while stack:
        value, path, depth, names = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise UnsafeSchema(f"{where} has over {limits.max_nodes} values, this service's limit")
        if isinstance(value, list):
            if depth > limits.max_depth:
                raise UnsafeSchema(f"{where} is nested over {limits.max_depth} levels deep (at {path})")
            stack.extend((v, f"{path}[{i}]", depth + 1, False) for i, v in enumerate(value))
        elif isinstance(value, dict):
            if depth > limits.max_depth:
                raise UnsafeSchema(f"{where} is nested over {limits.max_depth} levels deep (at {path})")
            for key, item in value.items():
                here = f"{path}.{key}"
                if not names:
                    if key in _REF_KEYS and isinstance(item, str) and not item.startswith("#"):
                        raise UnsafeSchema(
                            f"{here} = {item[:100]!r}: only references inside the schema ('#...') are allowed"
                        )
                    if allow_regex:
                        pass
                    elif key == "pattern" and isinstance(item, str):
                        raise UnsafeSchema(f"{here}: regular expressions ('pattern') are not supported by this service")
                    if key == "patternProperties" and isinstance(item, dict):
                        raise UnsafeSchema(
                            f"{here}: regular expressions ('patternProperties') are not supported by this service"
                        )
                    if key == "format" and item == "regex":
                        raise UnsafeSchema(f"{here}: 'format: regex' is not supported by this service")
                stack.append((item, here, depth + 1, not names and key in _NAME_MAPS and isinstance(item, dict)))


@lru_cache(maxsize=4096)
def _validator(schema_json: str) -> Draft202012Validator:
    """Checked, compiled validators by schema text: checking a schema costs far more than using it, and a BFCL toolkit
    registers the same ~30 schemas for every episode. References resolve inside the schema only (`_LOCAL_ONLY`)."""
    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=_LOCAL_ONLY)


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none
        return None


class _Outcome:
    __slots__ = ("value", "error", "done")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False


class ToolRegistry:
    """Tools by name. `timeout_s=None` calls tools inline (no thread, no timeout)."""

    def __init__(self, timeout_s: float | None = DEFAULT_TIMEOUT_S):
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be positive (or None for no timeout)")
        self.timeout_s = timeout_s
        self._tools: dict[str, RegisteredTool] = {}

    # --- registration ---
    def register(
        self,
        spec: ToolSpec | Mapping[str, Any],
        function: Callable[..., Any],
        *,
        bounds: Mapping[str, Any] | None = None,
    ) -> RegisteredTool:
        """Bind a schema to a callable. Raises ValueError for a duplicate name or a schema that is not valid.

        `bounds`: a JSON Schema the arguments must also meet, checked but not shown to the model (the spec stays as
        it is, so prompts do not change): what the tool can afford to compute, like MathAPI's largest exponent."""
        if not isinstance(spec, ToolSpec):
            spec = ToolSpec.model_validate({k: spec[k] for k in ("name", "description", "parameters") if k in spec})
        if not callable(function):
            raise ValueError(f"tool {spec.name!r}: {function!r} is not callable")
        if spec.name in self._tools:
            raise ValueError(f"a tool named {spec.name!r} is already registered")
        schema = json_schema_from_bfcl(spec.parameters) if spec.parameters else {}
        schema.setdefault("type", "object")
        if bounds:
            schema = {"allOf": [schema, dict(bounds)]}
        try:
            check_untrusted_schema(schema, _OWN_SCHEMAS, f"tool {spec.name!r}: parameters", allow_regex=True)
            validator = _validator(json.dumps(schema, sort_keys=True))
        except UnsafeSchema:
            raise
        except SchemaError as e:
            raise ValueError(f"tool {spec.name!r}: parameters are not a valid JSON Schema: {e.message}") from None
        except RecursionError:
            raise ValueError(f"tool {spec.name!r}: parameters are nested too deeply") from None
        except (TypeError, ValueError) as e:  # values JSON cannot hold (a Python object as a default)
            raise ValueError(f"tool {spec.name!r}: parameters are not JSON: {e}") from None
        tool = RegisteredTool(spec, function, validator, _signature(function))
        self._tools[spec.name] = tool
        return tool

    def register_all(self, tools: Iterable[tuple[ToolSpec | Mapping[str, Any], Callable[..., Any]]]) -> None:
        for spec, function in tools:
            self.register(spec, function)

    # --- lookup ---
    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    def get(self, name: str) -> RegisteredTool | None:
        return self._tools.get(name)

    # --- arguments ---
    def bind_arguments(self, name: str, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None) -> dict:
        """Positional + keyword arguments -> one arguments object, positional ones named by the function's signature
        (BFCL's gold calls write some arguments positionally: `sort('final_report.pdf')`).
        Raises ToolCallError if the tool is unknown or the arguments do not fit the signature."""
        kwargs = dict(kwargs or {})
        if not args:
            return kwargs
        tool = self._tools.get(name)
        if tool is None:
            raise ToolCallError(f"unknown tool {name!r}")
        if tool.signature is None:
            raise ToolCallError(f"{name}: positional arguments cannot be named (the function has no signature)")
        try:
            bound = tool.signature.bind_partial(*args, **kwargs)
        except TypeError as e:
            raise ToolCallError(f"{name}: {e}") from None
        named = dict(bound.arguments)
        for param in tool.signature.parameters.values():  # *args / **kwargs collect under one name: unpack or refuse
            if param.name in named and param.kind is inspect.Parameter.VAR_KEYWORD:
                named.update(named.pop(param.name))
            elif param.name in named and param.kind is inspect.Parameter.VAR_POSITIONAL:
                raise ToolCallError(f"{name}: positional arguments beyond the named parameters cannot be named")
        return named

    def _validation_error(self, tool: RegisteredTool, arguments: Mapping[str, Any]) -> str | None:
        try:
            error = best_match(tool.validator.iter_errors(to_json_value(dict(arguments))))
        except Exception as e:  # noqa: BLE001 -- an unresolvable $ref, absurd nesting: the call is what is invalid
            return f"the arguments could not be checked against the schema ({type(e).__name__}: {str(e)[:200]})"
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{error.message}" + (f" (at '{where}')" if where else "")

    def check_arguments(self, name: str, arguments: Mapping[str, Any]) -> str | None:
        """Why `arguments` violate the tool's schema, or None if they do not. KeyError for an unknown tool."""
        return self._validation_error(self._tools[name], arguments)

    # --- calling ---
    def _call(self, tool: RegisteredTool, arguments: dict[str, Any]) -> _Outcome:
        outcome = _Outcome()

        def run() -> None:
            try:
                outcome.value = tool.function(**arguments)
            except BaseException as e:  # noqa: BLE001 -- a worker thread must report, not die silently
                outcome.error = e
            outcome.done = True

        if self.timeout_s is None:
            try:
                outcome.value = tool.function(**arguments)
            except Exception as e:  # noqa: BLE001 -- every tool failure becomes an observation
                outcome.error = e
            outcome.done = True
            return outcome
        worker = threading.Thread(target=run, name=f"tool:{tool.spec.name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        return outcome

    def dispatch(self, name: str, arguments: Mapping[str, Any] | None = None, *, validate: bool = True) -> Observation:
        """Run one tool call. Never raises: every failure is an Observation with ok=False.

        `validate=False` skips the schema check (the arguments must still fit the function's signature): for replaying
        trusted calls whose source breaks its own schema (a BFCL gold call passes a string for an integer id)."""
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            shown = ", ".join(self._tools) if len(self._tools) <= 40 else f"{len(self._tools)} tools"
            return Observation.failure(str(name), "unknown_tool", f"Error: unknown tool {name!r}; available: {shown}")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            problem = f"Error: arguments for {name} must be an object, got {type(arguments).__name__}"
            return Observation.failure(name, "invalid_arguments", problem)
        arguments = dict(arguments)
        problem = self._validation_error(tool, arguments) if validate else None
        if problem is not None:
            return Observation.failure(name, "invalid_arguments", f"Error: invalid arguments for {name}: {problem}")
        if tool.signature is not None:
            try:
                tool.signature.bind(**arguments)
            except TypeError as e:
                return Observation.failure(name, "invalid_arguments", f"Error: invalid arguments for {name}: {e}")
        outcome = self._call(tool, arguments)
        if not outcome.done:
            return Observation.failure(name, "timeout", f"Error: {name} did not finish within {self.timeout_s:g} s")
        if isinstance(outcome.error, MemoryError):  # its message is empty; the sandbox's memory limit raises it
            return Observation.failure(name, "tool_error", "Error during execution: the tool ran out of memory")
        if outcome.error is not None:
            return Observation.failure(name, "tool_error", f"Error during execution: {outcome.error}")
        try:
            text = result_text(outcome.value)
        except Exception as e:  # noqa: BLE001 -- a result whose str() raises
            return Observation.failure(name, "tool_error", f"Error during execution: unprintable result ({e})")
        return Observation(ok=True, text=text, tool_name=name, value=outcome.value)

    def dispatch_call(self, call: PythonCall) -> Observation:
        """Run a parsed Python-style call; positional arguments are named by the function's signature."""
        try:
            arguments = self.bind_arguments(call.name, call.args, call.kwargs)
        except ToolCallError as e:
            kind: ErrorKind = "unknown_tool" if call.name not in self._tools else "invalid_arguments"
            return Observation.failure(call.name, kind, f"Error: {e.detail}")
        return self.dispatch(call.name, arguments)

    def dispatch_text(self, text: str) -> Observation:
        """Parse a Python-style call string (with `ast`, never eval) and run it. Never raises."""
        try:
            call = parse_python_call(text)
        except ToolCallError as e:
            return Observation.failure("", "invalid_call", f"Error: the call could not be parsed: {e.detail}")
        return self.dispatch_call(call)
