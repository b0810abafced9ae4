"""A user package for search_spaces/examples/digits_user_model.yaml: your own network,
named in the spec as 'user_models.nets:ResidualMLP' (imported from the spec's directory)."""
