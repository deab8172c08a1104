//! Corpus readers and writers, synthetic corpus, CLIP image encoder and index building (not built yet: see the indexer issue).
