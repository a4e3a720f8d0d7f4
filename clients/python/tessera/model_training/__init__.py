"""Training on a tessera server: fine-tuning runs (foundation_model)."""
