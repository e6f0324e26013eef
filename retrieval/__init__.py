"""The web_search tool: Elasticsearch backend (production) and an embedded tantivy index."""
