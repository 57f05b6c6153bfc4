"""atomr-infer-remote-core: shared infrastructure for calling remote LLM providers from a Thespian actor cluster."""

__version__ = "0.1.0"
