"""Built-in recommenders (see ``benchmark.registry.BUILTIN``)."""
