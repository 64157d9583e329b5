"""The model runtime: one home for loading models, generating and scoring."""
