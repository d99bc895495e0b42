"""Server-side toolkits: named factories that build one episode's tools for `POST /agent`.

A toolkit factory takes the request's `toolkit_config` (a JSON object) and returns a fresh tool runtime (a
`umi.tools.registry.ToolRegistry`, a `umi.tools.bfcl.BFCLToolkit`, or anything with `specs` and `dispatch`), so a
stateful toolkit's state lives for one request. A factory that cannot use the config raises `ToolkitError` (or
ValueError / TypeError), which the service reports as a 400 naming the toolkit.

Built in: `bfcl`, BFCL's executable tool classes, `{"classes": ["GorillaFileSystem", ...], "initial_config": {...},
"long_context": false}`.

Your own Python tools: write a factory, e.g. in `mytools.py`

    def weather(config):
        registry = ToolRegistry(timeout_s=5)
        registry.register({"name": "get_weather", "parameters": {...}}, get_weather)
        return registry

and start the service with `UMI_SERVE_TOOLKITS="weather=mytools:weather"` (comma-separated entries), or call
`ToolkitRegistry.register` when embedding the app. Every call of a non-BFCL toolkit runs under the service's tool time
limit as well, whatever the runtime does itself.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from umi.agent.loop import ToolRuntime
from umi.schema import ToolSpec
from umi.tools.registry import Observation

__all__ = ["Toolkit", "ToolkitError", "ToolkitRegistry", "default_toolkits", "TimedRuntime"]

ToolkitFactory = Callable[[Mapping[str, Any]], ToolRuntime]


class ToolkitError(ValueError):
    """A toolkit that does not exist or cannot be built from the given config."""


@dataclass(frozen=True)
class Toolkit:
    name: str
    factory: ToolkitFactory
    description: str = ""
    timed: bool = True  # wrap dispatch in the service's tool time limit (BFCL's toolkit applies it itself)


class TimedRuntime:
    """A runtime whose every dispatch returns within `timeout_s` (a call past it is reported as a timeout and left
    running in a daemon thread, as umi.tools.registry does: Python threads cannot be killed)."""

    def __init__(self, runtime: ToolRuntime, timeout_s: float):
        self.runtime = runtime
        self.timeout_s = timeout_s

    @property
    def specs(self) -> list[ToolSpec]:
        return self.runtime.specs

    def dispatch(self, name: str, arguments: dict[str, Any]) -> Any:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = self.runtime.dispatch(name, arguments)
            except BaseException as e:  # noqa: BLE001 -- reported as the observation
                box["error"] = e

        worker = threading.Thread(target=run, name=f"tool:{name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            return Observation.failure(name, "timeout", f"Error: {name} did not finish within {self.timeout_s:g} s")
        if "error" in box:
            e = box["error"]
            return Observation.failure(name, "tool_error", f"Error during execution: {type(e).__name__}: {e}")
        return box["value"]


class ToolkitRegistry:
    def __init__(self, tool_timeout_s: float = 10.0):
        self.tool_timeout_s = tool_timeout_s
        self._toolkits: dict[str, Toolkit] = {}

    def register(self, name: str, factory: ToolkitFactory, description: str = "", *, timed: bool = True) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("a toolkit needs a name")
        if name in self._toolkits:
            raise ValueError(f"a toolkit named {name!r} is already registered")
        if not callable(factory):
            raise ValueError(f"toolkit {name!r}: {factory!r} is not callable")
        self._toolkits[name] = Toolkit(name, factory, description or (factory.__doc__ or "").strip(), timed)

    def __contains__(self, name: object) -> bool:
        return name in self._toolkits

    @property
    def names(self) -> list[str]:
        return list(self._toolkits)

    def describe(self) -> list[dict[str, str]]:
        return [{"name": t.name, "description": t.description.split("\n\n")[0]} for t in self._toolkits.values()]

    def create(self, name: str, config: Mapping[str, Any] | None = None) -> ToolRuntime:
        """A fresh runtime of toolkit `name`; ToolkitError (naming the toolkit) if it is unknown or refuses `config`."""
        toolkit = self._toolkits.get(name)
        if toolkit is None:
            known = ", ".join(self._toolkits) or "none"
            raise ToolkitError(f"unknown toolkit {name!r} (registered: {known})")
        try:
            runtime = toolkit.factory(dict(config or {}))
        except (ToolkitError, ValueError, TypeError, KeyError) as e:
            raise ToolkitError(f"toolkit {name!r}: {e}") from None
        if not hasattr(runtime, "specs") or not callable(getattr(runtime, "dispatch", None)):
            raise ToolkitError(f"toolkit {name!r}: its factory returned {type(runtime).__name__}, not a tool runtime")
        return TimedRuntime(runtime, self.tool_timeout_s) if toolkit.timed else runtime

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


def _bfcl_factory(timeout_s: float) -> ToolkitFactory:
    def bfcl(config: Mapping[str, Any]) -> ToolRuntime:
        """BFCL's executable tool classes (file system, trading, travel, ...): {"classes": [...], "initial_config":
        {...}, "long_context": false}."""
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
        return BFCLToolkit(classes, config.get("initial_config") or {}, long_context=long_context, timeout_s=timeout_s)

    return bfcl


def default_toolkits(tool_timeout_s: float = 10.0, entries: str = "") -> ToolkitRegistry:
    """The built-in toolkits plus the `name=module:factory` entries given."""
    registry = ToolkitRegistry(tool_timeout_s)
    registry.register("bfcl", _bfcl_factory(tool_timeout_s), timed=False)
    registry.load_entries(entries)
    return registry
