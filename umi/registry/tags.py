"""Every MLflow tag key umi writes, defined once: on model versions (what a checkpoint is, how it was judged and
promoted), on the promotion records (the runs of `umi-promotions`, umi.registry.aliases) and on a pipeline's parent run
(umi.registry.tracking). Some keys go on more than one of them: `umi.promotion_id` and `umi.promotion_reason` name
the same move on the promoted versions and on its record."""

from __future__ import annotations

# --- on model versions: what the checkpoint is (umi.registry.store) ---------------------------------------------------
TAG_ROLE = "umi.role"  # also on the registered model and on a registry run
TAG_DATA_VERSION = "umi.data_version"  # the DVC dataset hash the stage trained on
TAG_CONFIG = "umi.config"  # the training profile, compact JSON
TAG_CONFIG_SHA = "umi.config_sha256"
TAG_FINGERPRINT = "umi.fingerprint"  # the stage fingerprint (umi.vocabulary.checkpoint_fingerprint)
TAG_EVALUATION = "umi.evaluation"  # JSON, once evaluated
TAG_PROFILE = "umi.profile"
TAG_PROMPT_FORMAT = "umi.prompt_format"  # umi.prompts.prompt_format of the training data, as the checkpoint records it
JSON_TAGS: tuple[str, ...] = (TAG_CONFIG, TAG_EVALUATION)  # the tags whose values are JSON documents

# --- on model versions: how they were judged and promoted (umi.registry.promote) -------------------------------------
TAG_PROMOTED_FROM = "umi.promoted_from"  # the version that was champion before this one ("" for the first)
TAG_PROMOTED_AT = "umi.promoted_at"
TAG_PROMOTION_ID = "umi.promotion_id"  # also on the promotion record
TAG_PROMOTION_REASON = "umi.promotion_reason"  # also on the promotion record and the pipeline's parent run
TAG_PROMOTION_EVIDENCE = "umi.promotion_evidence"  # also on the pipeline's parent run
TAG_PROMOTION_DECISION = "umi.promotion_decision"  # the rule's reason, promoted or not
TAG_ROLLED_BACK_AT = "umi.rolled_back_at"

# --- on promotion records, the runs of `umi-promotions` (umi.registry.aliases) ---------------------------------------
TAG_KIND = "umi.kind"  # promote | rollback
TAG_PLAN = "umi.plan"  # every alias move, JSON
TAG_OWNER = "umi.owner"  # host:pid of the writer
TAG_OUTCOME = "umi.outcome"

# --- on a pipeline's parent run (umi.registry.tracking) --------------------------------------------------------------
TAG_PROMOTED = "umi.promoted"  # whether the rule promoted the run's models
TAG_VERSION_PREFIX = "umi.version."  # + role: the version registered for it
