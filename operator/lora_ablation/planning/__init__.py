"""Planning: spec -> trials (names, module resolution, layer subsets), how each runs (sharding, placement,
the memory estimate), guardrails and suggestions. Pure."""
