"""smoothkd: knowledge distillation of LLMs with soft labels, shipped only when the student is faithful.

Dependency rule (checked by tests/test_layers.py over every import, function-local ones included): a
module imports only its own layer and the layers below it, never in a circle, and no private (`_x`) name
of another module. Below the stage layer a function takes the config sections it reads, never the
whole `RunConfig`.

    smoothkd.cli, bench/       the command and the benchmark scripts
    pipelines/                 the `distill` pipeline, its runner, stack registration
    steps/                     one ZenML step per file: tracking and metadata around one stage
                               (steps.tracking: what they share about MLflow, no step)
    smoothkd.stages            one cache-and-dispatch function per stage
    domain packages            validation, calibration, registry, evaluation, distill; beside them
                               tracking (MLflow logging), report (results record and tables), charts,
                               stackdef (stack definitions)
    smoothkd.modeling          models, tokenizers, model identity
    smoothkd.data              loaders, the embedded corpus, prompts, the prepared dataset's read side
    base                       config, io (atomic writes, the one content hasher), errors, artifacts
                               (the typed records between steps), data.schema (column constants)
"""
