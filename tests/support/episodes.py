"""An episode's growing role prompts about the weather, for the generation backends' tests: the planner prompt after
k rounds of planner / caller / observation turns, with its history span."""

from __future__ import annotations

from umi.inference.protocol import GenerationRequest
from umi.prompts import TURN_END, planner_prompt

__all__ = ["CITIES", "DOC", "history", "planner_request"]

DOC = '{"Name": "get_weather", "function": "Get the weather of a city", "input": {"city": "string, the city"}}\n'
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Doha", "Nice", "Bern"]


def history(k: int) -> str:
    """k rounds of planner / caller / observation turns about the weather."""
    turns = [f"user: What is the weather in {CITIES[0]} and the next cities?{TURN_END}"]
    for i in range(k):
        city = CITIES[i % len(CITIES)]
        turns += [
            f"assistant: I should call get_weather for {city}.\n Next: caller.{TURN_END}",
            f'caller: Action: get_weather\nAction Input: {{"city": "{city}"}}{TURN_END}',
            f'observation: {{"temperature": {10 + i}}}{TURN_END}',
        ]
    return "".join(turns)


def planner_request(k: int, **kw) -> GenerationRequest:
    """The planner's request after k rounds (`kw`: the request's other fields)."""
    h = history(k)
    prompt = planner_prompt(DOC, h)
    start = prompt.index(h)
    return GenerationRequest(prompt=prompt, history_span=(start, start + len(h)), **kw)
