"""Result-store adapters, one module per store; found by URL scheme (``taskmesh.result``)."""
