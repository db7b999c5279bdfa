"""plugstrip's adapters: each imports the core (:mod:`plugstrip.proxy`), none is imported by it."""
