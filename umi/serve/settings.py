"""The service's configuration: where the role models are, and the limits every request is held to.

Read from environment variables prefixed `UMI_SERVE_` (`UMI_SERVE_PLANNER_DIR=...`, `UMI_SERVE_MAX_STEPS=8`), so the
same Bento runs with different limits per deployment. Unknown `UMI_SERVE_*` variables are errors: a typo in a limit
must not silently leave the default in place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from umi.inference.gguf_export import GGUF_TYPES
from umi.inference.presets import MAX_STEPS, SERVING, GenerationSettings
from umi.inference.protocol import ENGINES, TRANSFORMERS
from umi.prompts import DEFAULT_DOC_STYLE, DocStyle
from umi.vocabulary import AGENT_ROLES

__all__ = ["ServeSettings", "HARD_MAX_STEPS"]

HARD_MAX_STEPS = MAX_STEPS  # the paper's real-time inference cap on planner turns
_CAPS = SERVING.max_new_tokens  # the per-role defaults: umi.inference.presets' SERVING preset


class ServeSettings(BaseSettings):
    """Every limit a request is held to, and where the models come from.

    Model source: either all three `*_dir` (checkpoint directories, or the same directory for several roles), or none,
    and the service takes the role models from the BentoML model store (`umi deploy build` puts them there).
    """

    model_config = SettingsConfigDict(env_prefix="UMI_SERVE_", extra="forbid", frozen=True)

    # --- models
    planner_dir: Path | None = None
    caller_dir: Path | None = None
    summarizer_dir: Path | None = None
    base_dir: Path | None = Field(
        None, description="base checkpoint of role models that are LoRA adapters (default: the adapters' own base)"
    )
    model_name: str = Field("umi-agent", min_length=1, description="the model id /v1/models lists and chat accepts")
    engine: str = Field(
        TRANSFORMERS,
        description="what generates (umi.inference.protocol.ENGINES): transformers (any device, `dtype`), or "
        "llama.cpp (the CPU, each role checkpoint's GGUF of `gguf_type`, converted on first load into umi's cache, "
        "keyed by the checkpoint's fingerprint; not LoRA adapters, not in the serving image yet)",
    )
    gguf_type: str = Field("f32", description="llama.cpp's weights: f32, bf16 or q8_0")
    gguf_dir: Path | None = Field(None, description="where llama.cpp's GGUFs are cached (default: <umi cache>/gguf)")
    device: str | None = Field(None, description="torch device (default: cuda when present, else cpu)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    doc_style: DocStyle = Field(
        DEFAULT_DOC_STYLE,
        description="tool doc rendering for checkpoints that record no prompt "
        "format (an imported backbone); a trained checkpoint's own format always wins",
    )
    cache_slots: int = Field(
        6, ge=1, le=64, description="KV caches kept per model: concurrent conversations reuse their prefixes"
    )
    workers: int = Field(1, ge=1, le=32, description="server processes; each loads its own copy of the models")
    max_batch: int = Field(
        8,
        ge=1,
        le=64,
        description="concurrent generations on one model run as one batch of up "
        "to this many (umi.inference.micro_batching); 1: each alone",
    )
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a lone generation waits for company")
    # --- request limits
    max_body_bytes: int = Field(1_000_000, gt=0)
    max_query_chars: int = Field(8_000, gt=0)
    max_messages: int = Field(200, gt=0)
    max_tools: int = Field(64, gt=0)
    max_steps: int = Field(8, ge=1, le=HARD_MAX_STEPS, description="the most planner turns an /agent request may have")
    default_steps: int = Field(6, ge=1, le=HARD_MAX_STEPS)
    max_new_tokens: int = Field(512, gt=0, description="the most tokens one role generation may ask for")
    planner_tokens: int = Field(_CAPS["planner"], gt=0)
    caller_tokens: int = Field(_CAPS["caller"], gt=0)
    summarizer_tokens: int = Field(_CAPS["summarizer"], gt=0)
    planner_retries: int = Field(SERVING.planner_retries, ge=0, le=5)
    max_json_depth: int = Field(64, ge=4, le=500, description="how deeply a request body's JSON may nest")
    # --- client tool schemas (umi.tools.registry.check_untrusted_schema)
    max_schema_bytes: int = Field(16_000, gt=0, description="one tool's parameter schema, as JSON text")
    max_schema_depth: int = Field(16, ge=2, le=200)
    max_schema_nodes: int = Field(2_000, gt=0, description="objects, arrays and values in one tool's schema")
    # --- time limits
    request_timeout_s: float = Field(120.0, gt=0, description="wall time of one request, waiting for a model included")
    tool_timeout_s: float = Field(10.0, gt=0, description="wall time of one server-side tool call")
    # --- the tool sandbox (umi.serve.sandbox): each episode's server-side tools in a worker process of their own
    tool_cpu_s: float | None = Field(None, gt=0, description="CPU time of one tool call (default: tool_timeout_s)")
    tool_memory_mb: int = Field(2048, ge=256, description="a tool worker's address space")
    max_tool_workers: int = Field(8, ge=1, le=256, description="episodes with server-side tools at once")
    # --- access: every endpoint but the health checks wants `Authorization: Bearer <key>` when this is set
    api_key: SecretStr | None = Field(None, description="UMI_SERVE_API_KEY; unset: no key needed (local use)")
    # --- user toolkits: "name=module:factory" entries, comma-separated
    toolkits: str = ""

    @field_validator("planner_dir", "caller_dir", "summarizer_dir", "base_dir")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_empty_key(cls, value):
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    @model_validator(mode="after")
    def _consistent(self) -> "ServeSettings":
        prefix = self.model_config["env_prefix"]
        unknown = sorted(
            k
            for k in os.environ
            if k.upper().startswith(prefix) and k[len(prefix) :].lower() not in type(self).model_fields
        )
        if unknown:
            raise ValueError(f"unknown settings in the environment: {unknown}")
        given = [r for r in AGENT_ROLES if getattr(self, f"{r}_dir") is not None]
        if given and len(given) != len(AGENT_ROLES):
            missing = [r for r in AGENT_ROLES if r not in given]
            raise ValueError(f"model directories: give all of planner/caller/summarizer or none (missing {missing})")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.gguf_type not in GGUF_TYPES:
            raise ValueError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {self.gguf_type!r}")
        if self.engine != TRANSFORMERS and self.device not in (None, "cpu"):
            raise ValueError(f"the {self.engine} engine runs on the CPU, not on device {self.device!r}")
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps {self.default_steps} exceeds max_steps {self.max_steps}")
        for role in AGENT_ROLES:
            if getattr(self, f"{role}_tokens") > self.max_new_tokens:
                raise ValueError(f"{role}_tokens exceeds max_new_tokens {self.max_new_tokens}")
        return self

    @property
    def model_dirs(self) -> dict[str, Path] | None:
        """{role: checkpoint dir} when the models come from directories, None when from the BentoML store."""
        if self.planner_dir is None:
            return None
        return {r: getattr(self, f"{r}_dir") for r in AGENT_ROLES}

    def sandbox_limits(self):
        from umi.serve.sandbox import SandboxLimits

        return SandboxLimits(
            wall_s=self.tool_timeout_s,
            cpu_s=self.tool_cpu_s or self.tool_timeout_s,
            memory_mb=self.tool_memory_mb,
            max_workers=self.max_tool_workers,
        )

    def schema_limits(self):
        from umi.tools.registry import SchemaLimits

        return SchemaLimits(self.max_schema_bytes, self.max_schema_depth, self.max_schema_nodes)

    def role_tokens(self) -> dict[str, int]:
        return {r: getattr(self, f"{r}_tokens") for r in AGENT_ROLES}

    def generation(self, max_new_tokens: dict[str, int] | None = None) -> GenerationSettings:
        """The SERVING preset with this deployment's caps (or `max_new_tokens`, per role) and retries; `global`
        (no role of the service) as the summarizer."""
        caps = dict(max_new_tokens or self.role_tokens())
        caps["global"] = caps["summarizer"]
        return SERVING.with_(max_new_tokens=caps, planner_retries=self.planner_retries)
