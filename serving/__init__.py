"""OpenAI-compatible HTTP serving of an anyany pipeline (``anyany serve``; docs/server.md)."""
