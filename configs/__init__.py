"""The experiment configs, shipped as package data (``lgvq.configs``); ``lgvq.experiment.config.resolve_config``
finds them by name, e.g. ``--config shapes-vqvae-lg``."""
