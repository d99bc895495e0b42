"""Server-side toolkits: named factories that build one episode's tools for `POST /agent`.

A toolkit factory takes the request's `toolkit_config` (a JSON object) and returns a fresh tool runtime (a
`umi.tools.registry.ToolRegistry`, a `umi.tools.bfcl.BFCLToolkit`, or anything with `specs` and `dispatch`), so a
stateful toolkit's state lives for one request. A factory that cannot use the config raises `ToolkitError` (or
ValueError / TypeError), which the service reports as a 400 naming the toolkit.

Built in: `bfcl`, BFCL's executable tool classes, `{"classes": ["GorillaFileSystem", ...], "initial_config": {...},
"long_context": false}`.

Your own Python tools: write a factory, e.g. in `mytools.py`

    def weather(config):
        registry = ToolRegistry(timeout_s=None)  # the service's sandbox stops a call past its limits
        registry.register({"name": "get_weather", "parameters": {...}}, get_weather)
        return registry

and start the service with `UMI_SERVE_TOOLKITS="weather=mytools:weather"` (comma-separated entries), or call
`ToolkitRegistry.register` when embedding the app. A factory must be importable (a module-level function or class):
every episode's toolkit is built, and every call runs, in a worker process of its own with the service's CPU-time,
memory and wall-time limits (umi.serve.sandbox), whatever the runtime does itself.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from umi.agent.loop import ToolRuntime
from umi.inference.deadlines import Deadline
from umi.serve.sandbox import SandboxedRuntime, SandboxError, SandboxLimits, ToolSandbox

__all__ = ["BFCLFactory", "Toolkit", "ToolkitError", "ToolkitRegistry", "default_toolkits"]

ToolkitFactory = Callable[[Mapping[str, Any]], ToolRuntime]


class ToolkitError(ValueError):
    """A toolkit that does not exist or cannot be built from the given config."""


@dataclass(frozen=True)
class Toolkit:
    name: str
    factory: ToolkitFactory
    description: str = ""


class ToolkitRegistry:
    def __init__(self, tool_timeout_s: float = 10.0, limits: SandboxLimits | None = None):
        self.tool_timeout_s = tool_timeout_s
        self.sandbox = ToolSandbox(limits or SandboxLimits(wall_s=tool_timeout_s, cpu_s=tool_timeout_s))
        self._toolkits: dict[str, Toolkit] = {}

    def register(self, name: str, factory: ToolkitFactory, description: str = "") -> None:
        if not name or not isinstance(name, str):
            raise ValueError("a toolkit needs a name")
        if name in self._toolkits:
            raise ValueError(f"a toolkit named {name!r} is already registered")
        if not callable(factory):
            raise ValueError(f"toolkit {name!r}: {factory!r} is not callable")
        try:
            pickle.dumps(factory)
        except Exception as e:  # noqa: BLE001 -- a lambda, a closure, a bound method of a local object
            raise ValueError(
                f"toolkit {name!r}: the factory must be importable by a worker process (a module-level "
                f"function or class): {e}"
            ) from None
        doc = description or (getattr(factory, "__doc__", None) or "").strip()
        self._toolkits[name] = Toolkit(name, factory, doc)

    def __contains__(self, name: object) -> bool:
        return name in self._toolkits

    @property
    def names(self) -> list[str]:
        return list(self._toolkits)

    def describe(self) -> list[dict[str, str]]:
        return [{"name": t.name, "description": t.description.split("\n\n")[0]} for t in self._toolkits.values()]

    def create(
        self, name: str, config: Mapping[str, Any] | None = None, *, deadline: Deadline | None = None
    ) -> SandboxedRuntime:
        """A fresh runtime of toolkit `name` in a worker process of its own (close it when the episode ends);
        ToolkitError (naming the toolkit) if it is unknown or refuses `config`; SandboxBusy if no worker is free."""
        toolkit = self._toolkits.get(name)
        if toolkit is None:
            known = ", ".join(self._toolkits) or "none"
            raise ToolkitError(f"unknown toolkit {name!r} (registered: {known})")
        try:
            return self.sandbox.open(toolkit.factory, dict(config or {}), deadline=deadline)
        except SandboxError as e:
            raise ToolkitError(f"toolkit {name!r}: {e}") from None

    def close(self) -> None:
        self.sandbox.close()

    def load_entries(self, entries: str) -> None:
        """Register toolkits from `name=module:factory` entries (comma-separated), as UMI_SERVE_TOOLKITS gives them."""
        for entry in (e.strip() for e in entries.split(",")):
            if not entry:
                continue
            name, eq, target = entry.partition("=")
            module_name, colon, attr = target.partition(":")
            if not eq or not colon or not name.strip() or not module_name.strip() or not attr.strip():
                raise ValueError(f"toolkit entry {entry!r}: expected name=module:factory")
            module = importlib.import_module(module_name.strip())
            try:
                factory = getattr(module, attr.strip())
            except AttributeError:
                raise ValueError(f"toolkit entry {entry!r}: {module_name} has no {attr!r}") from None
            self.register(name.strip(), factory)


@dataclass(frozen=True)
class BFCLFactory:
    """BFCL's executable tool classes (file system, trading, travel, ...): {"classes": [...], "initial_config":
    {...}, "long_context": false}."""

    def __call__(self, config: Mapping[str, Any]) -> ToolRuntime:
        from umi.tools.bfcl import SUPPORTED_CLASSES, BFCLToolkit

        unknown = set(config) - {"classes", "initial_config", "long_context"}
        if unknown:
            raise ToolkitError(f"unknown config keys {sorted(unknown)} (classes, initial_config, long_context)")
        classes = config.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ToolkitError(f"'classes' must be a non-empty list of BFCL classes ({', '.join(SUPPORTED_CLASSES)})")
        long_context = config.get("long_context", False)
        if not isinstance(long_context, bool):
            raise ToolkitError("'long_context' must be true or false")
        # no thread timeout inside the worker: its process is the unit the sandbox stops
        return BFCLToolkit(classes, config.get("initial_config") or {}, long_context=long_context, timeout_s=None)


def default_toolkits(
    tool_timeout_s: float = 10.0, entries: str = "", limits: SandboxLimits | None = None
) -> ToolkitRegistry:
    """The built-in toolkits plus the `name=module:factory` entries given."""
    registry = ToolkitRegistry(tool_timeout_s, limits)
    registry.register("bfcl", BFCLFactory())
    registry.load_entries(entries)
    return registry
