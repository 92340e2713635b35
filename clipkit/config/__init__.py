"""Configuration: typed schema (schema.py), Hydra registration and composition (compose.py),
and checks of values that types cannot express (validate.py)."""
