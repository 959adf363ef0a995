"""Running the gateway: worker processes, signals and graceful shutdown (``serve``), the
asyncio HTTP/1.1 server (``http_server``, ``http1``), periodic tasks and CPU work off the
event loop (``periodic``, ``offload``)."""
