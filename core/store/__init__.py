"""The activation store: reading it, building it (the batched pipeline, its forward hooks, the optional Ray source)."""
