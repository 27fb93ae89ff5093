"""`asd-watch`: feed a recorder's WAV files (or a sound card) to the scoring service.

A client of the public HTTP API only: it imports nothing of the service or of training.
"""
