"""finegrain_tf.serving: SavedModel export for TF Serving, gRPC/REST clients, and a development server.

  export.py          a training run (or a previous export + new gallery) -> a verified version directory
  export_module.py   the tf.Module holding model, preprocessing and gallery index; its signatures
  gallery.py, warmup.py, verify.py, layout.py    the export's parts
  servable.py        a version loaded through the TF1 session loader (what TF Serving runs)
  client.py          gRPC and REST clients
  server.py, rest.py, server_process.py
                     a development/test harness speaking TF Serving's gRPC and REST protocols
                     (use the stock TF Serving server in production)

Names are imported lazily (the client and server need the `[serving]` extra: tensorflow-serving-api, grpcio).
"""

import importlib

_EXPORTS = {
    "export_model": "export", "export_from_model_dir": "export", "export_gallery_update": "export",
    "load_model_dir": "export",
    "ExportModule": "export_module", "ImagePreprocessing": "export_module",
    "load_gallery": "gallery", "save_gallery": "gallery", "model_fingerprint": "gallery",
    "verify_export": "verify", "read_gallery": "verify", "ExportVerificationError": "verify",
    "SessionServable": "servable", "RequestError": "servable", "unservable_ops": "servable",
    "Client": "client", "RestClient": "client",
    "DevModelServer": "server", "start_server_process": "server_process", "ServerProcess": "server_process",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
