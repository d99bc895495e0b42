"""Inference: the role models generating, from a checkpoint directory to a Generation. Import from the modules;
this package imports nothing itself.

    protocol             GenerationRequest, Generation, and the Backend / ModelBackend protocols callers use
    tokens               the prompt half of tokenisation (prompt ids, fitting a prompt to a budget); training's too
    transformers_backend TransformersBackend: one model, its prefill and single-sequence decoding
    llama_cpp_backend    LlamaCppBackend: a checkpoint's GGUF decoded by llama.cpp, one sequence at a time
    gguf_export          a checkpoint's GGUF (f32, bf16, q8_0) by llama.cpp's converter, keyed by its fingerprint
    gguf_convert         the converter's subprocess (never imported)
    prefix_cache         KV-cache reuse across prompts that share a token prefix
    decoding             per-sequence stopping, the next token, a finished sequence's Generation, one-at-a-time loops
    padded_batch         static batching: left-padded prompts decoded together
    continuous_batching  continuous batching: requests join and leave a running batch between steps
    micro_batching       one worker per model batching concurrent threads' generations
    sharing              a model shared by threads: its lock, its batcher, a request's deadline view
    deadlines            a request's time budget (RequestTimeout, RequestCancelled)
    wrapping             the pass-through base of backend wrappers, and wrapping once per distinct backend
    loading              checkpoints (plain or LoRA adapters) to models and backends, on an engine
    devices              the device and dtype rule
    presets              generation caps per role and retry settings: the loop's, evaluation's, chat's, serving's
    agent_specs          which checkpoints play which roles (AgentSpec), the usual agents of the training layout

Imports run downward only: this package imports nothing of umi.train, umi.eval, umi.serve or umi.agent
(tests/code/test_import_layers.py), so the service carries no training code.
"""
