//! Loads an index, embeds a query and returns neighbours with their code (not built yet: see the indexer/retriever issue).
