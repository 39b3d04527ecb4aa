"""Stand-ins for a user's own model package (imported by name from the config in tests/test_user_model.py)."""
