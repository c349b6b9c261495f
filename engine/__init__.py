"""The machinery under the stages, which imports none: the store, caching, locks, retries, run log, champions, gc."""
