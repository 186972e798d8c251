"""The experiment configs, shipped as package data (``lgvq.configs``); ``lgvq.config.resolve_config``
finds them by name, e.g. ``--config shapes-vqvae-lg``."""
