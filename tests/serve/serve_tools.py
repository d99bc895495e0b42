"""A user toolkit for the service tests, importable by a `bentoml serve` subprocess through UMI_SERVE_TOOLKITS
(`weather=serve_tools:weather_toolkit`, with this folder on PYTHONPATH)."""

from __future__ import annotations

import time

from umi.schema import ToolSpec
from umi.tools.registry import ToolRegistry

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather of a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "the city"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
OPENAI_WEATHER = {"type": "function", "function": WEATHER.model_dump()}
SLOW = ToolSpec(
    name="slow_lookup",
    description="Takes its time",
    parameters={"type": "object", "properties": {"seconds": {"type": "number"}}},
)


def weather_toolkit(config):
    """Weather for any city; config {"unit": "C" | "F"}."""
    unit = config.get("unit", "C")
    if unit not in ("C", "F"):
        raise ValueError(f"unit must be C or F, got {unit!r}")
    registry = ToolRegistry(timeout_s=None)  # the service applies its own tool time limit
    registry.register(WEATHER, lambda city: {"city": city, "temperature": len(city) * 3, "unit": unit})
    registry.register(SLOW, lambda seconds=0: time.sleep(seconds) or "done")
    return registry


SPIN = ToolSpec(
    name="spin",
    description="Computes for ever",
    parameters={"type": "object", "properties": {"seconds": {"type": "number"}}},
)
HOG = ToolSpec(
    name="hog", description="Allocates memory", parameters={"type": "object", "properties": {"mb": {"type": "integer"}}}
)


def _spin(seconds: float = 3600) -> str:
    end = time.process_time() + seconds
    while time.process_time() < end:  # CPU, not sleep: only a CPU-time limit or a kill stops it
        pass
    return "spun"


def _hog(mb: int = 100_000) -> str:
    blocks = [bytearray(1024 * 1024) for _ in range(mb)]
    return f"held {len(blocks)} MB"


def hostile_toolkit(config):
    """Tools that misbehave, and a factory that does when asked: {"spin_s": seconds} burns CPU while being built."""
    if config.get("spin_s"):
        _spin(float(config["spin_s"]))
    registry = ToolRegistry(timeout_s=None)
    registry.register(SPIN, _spin)
    registry.register(HOG, _hog)
    registry.register(WEATHER, lambda city: {"city": city, "temperature": len(city) * 3, "unit": "C"})
    return registry
