"""Training recipes: one ml_collections file per model family (``get_config(variant)``)."""
