"""The serving core: model repository, registry, loading, dynamic batching, servables and the
data plane. Typed requests in, typed results out; nothing here knows a transport."""
