"""The HTTP layer: routers (`routes/`), dependencies (`deps`), errors and middleware."""
