"""The machinery under the stages: the artifact store, caching, locks, retries, the run log and the gate.

Nothing here imports a stage.
"""
