"""The experiment floor: a config and its checks, the Run built from it, the training loop, the
run folder with its checkpoints and logs, evaluation, release conversion, run comparison and
pictures. It sits above the engine (ops, quantize, compat, models, guidance, data, text) and
below the demo and the command line (``docs/design.md``, "Layout")."""
