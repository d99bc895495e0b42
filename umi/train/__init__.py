"""GLPFT training: backbone import, the completion-only fine-tuning engine, the four stages, DeepSpeed launch.

Entry points (import from the submodules; this package imports nothing heavy itself):
- umi.train.backbone: import_backbone(source=None, out_dir, cache_dir, force) -> Path (tiny random models for
  tests: tests/support/tiny.py).
- umi.train.config: load_config("paper" | "cpu" | "tiny" | path, **overrides) -> TrainConfig.
- umi.train.stages: train_stage(stage, config, datasets_dir, out_dir, init_from, ...) -> StageResult;
  train_glpft(config, datasets_dir, out_root, backbone, from_backbone=False, ...) -> {stage: StageResult}.
- umi.train.tokenize: encode_example (prompt + target + EOS, the loss on the target); the prompt half is
  umi.inference.tokens, what generation feeds the model.
- python -m umi.train.launch: one stage per process under the DeepSpeed launcher or torchrun (docs/training.md).
"""
