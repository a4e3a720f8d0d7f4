"""Client of a tessera server."""
from tessera.client import Client, TesseraError, configure, default_client

__all__ = ["Client", "TesseraError", "configure", "default_client"]
__version__ = "0.1.0"
