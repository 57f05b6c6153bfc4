"""The HTTP front door: OpenAI- and Anthropic-compatible endpoints in front of a node (docs/http.md).

``keys.new_key()`` makes a caller key; ``actors.ops.http_process.start_http`` runs the
listener beside a node; ``python -m actors.http`` runs it by hand.
"""
