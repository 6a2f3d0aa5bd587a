"""finegrain_tf.serving: SavedModel export for TF Serving, gRPC client, protocol-compatible dev server.

Names are imported lazily (the client and server need the `[serving]` extra: tensorflow-serving-api, grpcio).
"""

import importlib

_EXPORTS = {
    "export_model": "export", "export_from_model_dir": "export", "verify_export": "export",
    "build_gallery": "export", "load_model_dir": "export", "read_gallery": "export",
    "ExportVerificationError": "export", "MAX_GALLERY_SIZE": "export",
    "SessionServable": "servable", "RequestError": "servable", "unservable_ops": "servable",
    "Client": "client",
    "DevModelServer": "server", "start_server_process": "server", "ServerProcess": "server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
