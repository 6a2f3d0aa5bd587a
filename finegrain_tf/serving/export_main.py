"""`finegrain-export`: a training run's model dir -> SavedModel in TF Serving layout, verified.

    finegrain-export --model_dir=runs/demo --export_base=exports [--gallery=images/ | gallery.npz]
                     [--gallery_index=auto|exact|ivf --nlist=N --nprobe=N]
    finegrain-export --from_export=exports/finegrain/3 --gallery=new.npz     # new gallery, same model

Writes `<export_base>/<model_name>/<version>/` (model_name and top_k default to the run's params.yaml;
version defaults to the next free integer), then loads it through the TF1 session loader (the path
TF Serving uses) and checks every signature against the in-memory model. With --from_export the next
version beside the given one gets the same model and an index over the new gallery.
"""

import sys

from absl import app, flags

from finegrain_tf.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (params.yaml, model.keras, class_names.txt).")
flags.DEFINE_string("export_base", None, "Base path; the export goes to <export_base>/<model_name>/<version>.")
flags.DEFINE_string("from_export", None, "A version directory of an earlier export: write the next version "
                    "with its model and the new --gallery (no training run needed).")
flags.DEFINE_string("model_name", None, "Model name (default: export.model_name of params.yaml).")
flags.DEFINE_integer("version", None, "Version number (default: next free one).")
flags.DEFINE_string("gallery", None, "Class-per-subfolder image folder or .npz (embeddings [N, D], ids [N]) "
                    "indexed for the lookup signature.")
flags.DEFINE_string("gallery_index", "auto", "Index kind of finegrain_tf.retrieval.build_index (auto: exact "
                    "search for small galleries, approximate above).")
flags.DEFINE_integer("nlist", None, "Inverted lists of an IVF index (default: about 2 sqrt(N)).")
flags.DEFINE_integer("nprobe", None, "Lists an IVF lookup scans by default (a request may pass its own).")
flags.DEFINE_integer("max_image_pixels", 40_000_000, "Largest image (pixels) the served graph decodes; a "
                     "larger one is refused with INVALID_ARGUMENT before decoding.")
flags.DEFINE_float("max_image_aspect_ratio", 50.0, "Largest long side / short side the served graph decodes.")
flags.DEFINE_integer("top_k", None, "Classes / neighbours returned (default: export.top_k of params.yaml).")
flags.DEFINE_bool("verify", True, "Verify the export through the session loader against the Keras model.")


def _index_options() -> dict:
    from finegrain_tf.retrieval import KINDS

    if FLAGS.gallery_index not in KINDS:
        raise app.UsageError(f"--gallery_index must be one of {list(KINDS)}, got {FLAGS.gallery_index!r}")
    options = {"kind": FLAGS.gallery_index}
    if FLAGS.nlist is not None:
        options["nlist"] = FLAGS.nlist
    if FLAGS.nprobe is not None:
        options["nprobe"] = FLAGS.nprobe
    return options


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from finegrain_tf.serving import export, verify

    options = _index_options()
    if not FLAGS.gallery and (FLAGS.nlist or FLAGS.nprobe or FLAGS.gallery_index != "auto"):
        raise app.UsageError("--gallery_index / --nlist / --nprobe need a --gallery")
    try:
        if FLAGS.from_export:
            if FLAGS.model_dir or not FLAGS.gallery:
                raise app.UsageError("--from_export takes a new --gallery (and no --model_dir)")
            export_dir = export.export_gallery_update(FLAGS.from_export, FLAGS.gallery, FLAGS.version, options)
            model = None
        else:
            if not FLAGS.model_dir or not FLAGS.export_base:
                raise app.UsageError("give --model_dir and --export_base (or --from_export and --gallery)")
            from finegrain_tf.data.decode import DecodeLimits

            limits = DecodeLimits(FLAGS.max_image_pixels, FLAGS.max_image_aspect_ratio)
            export_dir = export.export_from_model_dir(FLAGS.model_dir, FLAGS.export_base, FLAGS.model_name,
                                                      FLAGS.version, FLAGS.gallery, FLAGS.top_k,
                                                      options if FLAGS.gallery else None, limits)
            model = export.load_model_dir(FLAGS.model_dir)[0]
        if FLAGS.verify and model is not None:
            verify.verify_export(export_dir, model)
        elif FLAGS.verify:
            verify.verify_gallery_update(export_dir, FLAGS.from_export)
    except (ValueError, verify.ExportVerificationError) as e:  # a user error: one line, no traceback
        sys.stderr.write(f"finegrain-export: {e}\n")
        sys.exit(1)
    print(export_dir)


def run():
    cli.run(main, __name__)  # --help lists this module's flags and exits 0


if __name__ == "__main__":
    run()
