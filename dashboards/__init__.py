"""Plotly sustainability dashboard (reads the store only)."""
