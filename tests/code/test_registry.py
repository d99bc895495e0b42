"""The tool registry: schemas bound to callables; every failure comes back as an observation, never an exception."""

import json
import re
import threading

import pytest

from umi.schema import ToolSpec
from umi.tools.calls import PythonCall, ToolCallError
from umi.tools.registry import Observation, ToolRegistry, json_schema_from_bfcl, result_text

BFCL_STYLE = {
    "type": "dict",
    "properties": {
        "name": {"type": "string", "description": "who"},
        "ratio": {"type": "float", "description": "a float, BFCL style", "default": 1.0},
        "point": {"type": "tuple", "items": {"type": "integer"}, "description": "x, y"},
        "anything": {"type": "any", "description": "no constraint"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "options": {
            "type": "dict",
            "properties": {"depth": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["depth"],
        },
    },
    "required": ["name"],
}


def test_bfcl_types_become_json_schema():
    schema = json_schema_from_bfcl(BFCL_STYLE)
    props = schema["properties"]
    assert schema["type"] == "object"
    assert props["ratio"]["type"] == "number" and props["ratio"]["default"] == 1.0
    assert props["point"] == {"type": "array", "items": {"type": "integer"}, "description": "x, y"}
    assert "type" not in props["anything"] and props["anything"]["description"] == "no constraint"
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert props["options"]["type"] == "object" and props["options"]["required"] == ["depth"]
    assert props["options"]["properties"]["tags"]["items"] == {"type": "string"}
    assert schema["required"] == ["name"]
    assert json_schema_from_bfcl(schema) == schema  # idempotent on JSON Schema
    assert BFCL_STYLE["type"] == "dict"  # the input is not modified
    assert json_schema_from_bfcl({"type": ["string", "float"]}) == {"type": ["string", "number"]}
    with pytest.raises(ValueError, match="unknown parameter type"):
        json_schema_from_bfcl({"type": "dict", "properties": {"x": {"type": "HashMapOfThings"}}})


def test_result_text_follows_bfcls_executor():
    assert result_text("plain") == "plain"
    assert result_text({"a": 1, "b": "é"}) == json.dumps({"a": 1, "b": "é"})
    assert result_text({"obj": object()}).startswith("{'obj': <object object")
    assert result_text(None) == "None"
    assert result_text([1, "a"]) == "[1, 'a']"
    assert result_text(2.5) == "2.5"


@pytest.fixture
def registry():
    calls = []

    def greet(name, ratio=1.0, point=None, anything=None, mode="fast", options=None):
        calls.append(name)
        return {"greeting": f"hello {name}", "ratio": ratio, "point": list(point) if point else None}

    def boom(reason: str):
        raise RuntimeError(f"kaput: {reason}")

    def echo(text: str):
        return text

    reg = ToolRegistry(timeout_s=5)
    reg.register({"name": "greet", "description": "Say hello.", "parameters": BFCL_STYLE}, greet)
    reg.register(
        ToolSpec(name="boom", parameters={"type": "object", "properties": {"reason": {"type": "string"}}}), boom
    )
    reg.register(ToolSpec(name="echo", parameters={"type": "dict", "properties": {"text": {"type": "string"}}}), echo)
    reg.calls = calls  # type: ignore[attr-defined]
    return reg


def test_dispatch_success(registry):
    obs = registry.dispatch("greet", {"name": "Ada", "ratio": 2, "point": (1, 2), "anything": {"x": [1]}})
    assert obs.ok and obs.error_kind is None and obs.tool_name == "greet"
    assert json.loads(obs.text) == {"greeting": "hello Ada", "ratio": 2, "point": [1, 2]}  # tuple validated as array
    assert obs.value["greeting"] == "hello Ada"
    assert registry.dispatch("echo", {"text": "hi"}) == Observation(ok=True, text="hi", tool_name="echo")
    assert registry.names == ["greet", "boom", "echo"] and "greet" in registry and len(registry) == 3
    assert registry.specs[0].parameters["type"] == "dict"  # the spec stays as registered (what the model reads)


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        ({}, "'name' is a required property"),
        ({"name": 3}, "3 is not of type 'string'"),
        ({"name": "x", "ratio": "fast"}, "'fast' is not of type 'number'"),
        ({"name": "x", "mode": "medium"}, "'medium' is not one of ['fast', 'slow']"),
        ({"name": "x", "point": [1, "two"]}, "'two' is not of type 'integer'"),
        ({"name": "x", "options": {"tags": ["a"]}}, "'depth' is a required property"),
        ({"name": "x", "options": {"depth": True}}, "True is not of type 'integer'"),
        ({"name": "x", "volume": 11}, "unexpected keyword argument 'volume'"),  # not in the function's signature
    ],
)
def test_invalid_arguments_become_observations(registry, arguments, fragment):
    obs = registry.dispatch("greet", arguments)
    assert not obs.ok and obs.error_kind == "invalid_arguments"
    assert fragment in obs.text and obs.text.startswith("Error: invalid arguments for greet")
    assert registry.calls == []  # the tool never ran


def test_schema_error_names_the_nested_path(registry):
    obs = registry.dispatch("greet", {"name": "x", "options": {"depth": "deep"}})
    assert "(at 'options/depth')" in obs.text


def test_other_failures_become_observations(registry):
    unknown = registry.dispatch("rm_rf", {"path": "/"})
    assert not unknown.ok and unknown.error_kind == "unknown_tool" and "greet, boom, echo" in unknown.text
    assert registry.dispatch(None, {}).error_kind == "unknown_tool"  # type: ignore[arg-type]
    not_object = registry.dispatch("echo", ["hi"])  # type: ignore[arg-type]
    assert not_object.error_kind == "invalid_arguments" and "must be an object" in not_object.text
    raised = registry.dispatch("boom", {"reason": "disk full"})
    assert raised == Observation(
        ok=False, text="Error during execution: kaput: disk full", tool_name="boom", error_kind="tool_error"
    )


def test_timeout_is_an_observation():
    release = threading.Event()
    reg = ToolRegistry(timeout_s=0.05)
    reg.register(ToolSpec(name="slow"), lambda: release.wait(5))
    try:
        obs = reg.dispatch("slow", {})
        assert not obs.ok and obs.error_kind == "timeout" and "did not finish within 0.05 s" in obs.text
    finally:
        release.set()


def test_inline_mode_has_no_thread_and_still_catches():
    seen = []
    reg = ToolRegistry(timeout_s=None)
    reg.register(ToolSpec(name="who"), lambda: seen.append(threading.current_thread()) or "me")
    reg.register(ToolSpec(name="bad"), lambda: 1 / 0)
    assert reg.dispatch("who").text == "me" and seen == [threading.current_thread()]
    assert reg.dispatch("bad").text == "Error during execution: division by zero"
    with pytest.raises(ValueError):
        ToolRegistry(timeout_s=0)


def test_registration_errors_raise():
    reg = ToolRegistry()
    reg.register(ToolSpec(name="a"), lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(ToolSpec(name="a"), lambda: 2)
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        reg.register(ToolSpec(name="b", parameters={"type": "object", "required": "x"}), lambda x: x)
    with pytest.raises(ValueError, match="not callable"):
        reg.register(ToolSpec(name="c"), "not a function")  # type: ignore[arg-type]


def test_positional_arguments_are_named_by_the_signature(registry):
    assert registry.bind_arguments("greet", ("Ada", 0.5)) == {"name": "Ada", "ratio": 0.5}
    assert registry.bind_arguments("greet", (), {"name": "Ada"}) == {"name": "Ada"}
    with pytest.raises(ToolCallError, match="too many positional"):
        registry.bind_arguments("echo", ("a", "b"))
    with pytest.raises(ToolCallError, match="multiple values"):
        registry.bind_arguments("echo", ("a",), {"text": "b"})
    with pytest.raises(ToolCallError, match="unknown tool"):
        registry.bind_arguments("nope", ("a",))
    assert registry.dispatch_call(PythonCall("echo", ("hi",))).text == "hi"
    assert registry.dispatch_call(PythonCall("echo", ("a", "b"))).error_kind == "invalid_arguments"
    assert registry.dispatch_call(PythonCall("nope", ("a",))).error_kind == "unknown_tool"


def test_dispatch_text_parses_safely(registry):
    assert registry.dispatch_text("echo('hi')").text == "hi"
    assert registry.dispatch_text("greet(name='Ada', point=(3, 4))").ok
    hostile = registry.dispatch_text("__import__('os').system('echo pwned')")
    assert not hostile.ok and hostile.error_kind == "invalid_call"
    assert registry.dispatch_text("os.system('echo pwned')").error_kind == "unknown_tool"
    assert registry.dispatch_text("echo(text=open('/etc/passwd').read())").error_kind == "invalid_call"


def test_validation_can_be_skipped_but_not_the_signature(registry):
    assert registry.check_arguments("greet", {"name": 3}) == "3 is not of type 'string' (at 'name')"
    assert registry.check_arguments("greet", {"name": "x"}) is None
    obs = registry.dispatch("greet", {"name": 3}, validate=False)
    assert obs.ok and registry.calls == [3]
    assert registry.dispatch("greet", {"nom": "x"}, validate=False).error_kind == "invalid_arguments"


# --- schemas from strangers: local references only, no regular expressions, caps ------------------------------------
def test_a_remote_or_file_reference_is_refused_at_registration(listener, tmp_path):
    url, seen = listener
    secret = tmp_path / "secret.json"
    secret.write_text('{"type": "string", "description": "TOP SECRET"}')
    for ref in (f"{url}/s.json", secret.as_uri(), "s.json", "//127.0.0.1/x"):
        schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
        with pytest.raises(ValueError, match="only references inside the schema") as e:
            ToolRegistry().register({"name": "f", "parameters": schema}, lambda a=None: a)
        assert "TOP SECRET" not in str(e.value)
    assert seen == []


def test_no_validator_ever_retrieves_a_reference(listener):
    """The backstop under the registration check: references resolve through a registry that refuses every URI, so
    even a schema that got past the check (a base URI set by $id) makes no request; the call is just invalid."""
    from umi.tools.registry import _validator

    url, seen = listener
    for schema in (
        {"$ref": f"{url}/s.json"},
        {"$id": f"{url}/root/", "properties": {"a": {"$ref": "other.json"}}},
        {"$id": f"{url}/root/", "properties": {"a": {"$ref": "#/$defs/none"}}},
    ):
        validator = _validator(json.dumps(schema))
        with pytest.raises(Exception, match="Unresolvable|NoSuchResource|PointerToNowhere"):
            list(validator.iter_errors({"a": "x"}))
    assert seen == []


def test_check_arguments_never_raises_whatever_the_schema_or_arguments():
    registry = ToolRegistry(timeout_s=None)
    registry.register(
        {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}}}, lambda a=None: a
    )
    registry.register(
        {"name": "g", "parameters": {"type": "object", "properties": {"a": {"$ref": "#"}}}}, lambda a=None: a
    )
    why = registry.check_arguments("f", {"a": 1})
    assert why is not None and "could not be checked against the schema" in why
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    assert "could not be checked" in registry.check_arguments("g", deep)
    obs = registry.dispatch("f", {"a": 1})
    assert not obs.ok and obs.error_kind == "invalid_arguments"


@pytest.mark.parametrize(
    "schema, problem",
    [
        ({"properties": {"a": {"$ref": "https://x.org/s"}}}, "parameters.properties.a.$ref = 'https://x.org/s': only "),
        ({"items": [{"$dynamicRef": "file:///x"}]}, "only references inside the schema"),
        ({"enum": [{"$ref": "http://x"}], "$ref": "#/enum/0"}, "only references inside"),  # a pointer into data
        ({"properties": {"a": {"pattern": "^(a+)+$"}}}, "parameters.properties.a.pattern: regular expressions"),
        ({"x-hidden": {"pattern": "a"}, "$ref": "#/x-hidden"}, "regular expressions ('pattern')"),
        ({"patternProperties": {"a*": {}}}, "('patternProperties')"),
        ({"propertyNames": {"format": "regex"}}, "'format: regex'"),
        ({"description": "x" * 20_000}, "bytes of JSON, over this service's limit of 16000"),
        ({"enum": [0] * 2_500}, "over 2000 values"),
        ({"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {}}}}}}}}}}, "nested over 8 levels"),
    ],
)
def test_untrusted_schemas_are_refused_saying_what_and_where(schema, problem):
    from umi.tools.registry import SchemaLimits, UnsafeSchema, check_untrusted_schema

    limits = SchemaLimits(max_depth=8) if "levels" in problem else SchemaLimits()
    with pytest.raises(UnsafeSchema, match=re.escape(problem)):
        check_untrusted_schema(schema, limits)


def test_untrusted_schemas_that_only_look_like_it_pass():
    from umi.tools.registry import check_untrusted_schema

    check_untrusted_schema(
        {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "$ref": {"type": "string"},
                "format": {"type": "string"},
                "patternProperties": {"type": "object"},
            },
            "required": ["pattern", "$ref"],
            "$defs": {"s": {"type": "string"}},
            "anyOf": [{"$ref": "#/$defs/s"}, {"$ref": "#"}],
        }
    )
    check_untrusted_schema(json_schema_from_bfcl(BFCL_STYLE))


def test_bounds_are_checked_but_not_shown():
    registry = ToolRegistry(timeout_s=None)
    spec = {"name": "power", "parameters": {"type": "object", "properties": {"e": {"type": "integer"}}}}
    registry.register(spec, lambda e: 2**e, bounds={"properties": {"e": {"maximum": 100}}})
    assert registry.specs[0].parameters == spec["parameters"]  # what the model reads is unchanged
    assert registry.dispatch("power", {"e": 10}).text == "1024"
    obs = registry.dispatch("power", {"e": 10**9})
    assert obs.error_kind == "invalid_arguments" and "greater than the maximum of 100" in obs.text
