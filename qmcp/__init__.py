"""qmcp: define LLM agents, compose them into topologies and run them on pluggable runners."""

import logging

__version__ = "0.1.0"
logging.getLogger("qmcp").addHandler(logging.NullHandler())
__all__ = ["__version__"]
