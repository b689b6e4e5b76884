"""Runtime: backends, the stream runner and its per-model policies, sources and sinks."""
