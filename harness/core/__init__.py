"""What every stage shares: registries, hashing and atomic writes, the query record, result
types (one `Missing`, one `Failed`), errors (the one error layer: redaction, shortening,
what a store error means), stores (URL checks, locks, the one retry policy), processes
(child processes and signals), the clip grid and the stage vocabulary.

Nothing here imports another part of the harness: every other package may import `core`.
"""
