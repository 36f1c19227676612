"""Where the data comes from and how it is split: the dataset sources (kdflow.data.sources) and
the seeded, stratified split that writes data/prepared/ (kdflow.data.split). The `prepare` stage
alone imports this package; every later stage reads the prepared shards (kdflow.core.prepared)."""
