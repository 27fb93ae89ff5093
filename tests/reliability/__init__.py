"""Reliability and security: fuzzing, load, faults, auth, secrets (see RELIABILITY.md)."""
