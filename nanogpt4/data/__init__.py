"""Data: the corpus from pinned registry packages, and token shards."""
