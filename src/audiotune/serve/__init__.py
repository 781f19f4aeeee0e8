"""OpenAI-compatible serving: request parsing, an engine with adapter switching, dynamic batching, the app."""
