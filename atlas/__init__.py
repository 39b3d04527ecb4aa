"""atlas-kd: train, export, convert and verify small models for the Atlas 200 DK."""
