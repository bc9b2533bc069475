"""Reference data shipped with the wheel (replay traces for demos and tests)."""
