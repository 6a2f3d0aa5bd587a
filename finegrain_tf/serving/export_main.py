"""`finegrain-export`: a training run's model dir -> SavedModel in TF Serving layout, verified.

    finegrain-export --model_dir=runs/demo --export_base=exports [--gallery=images/ | gallery.npz]

Writes `<export_base>/<model_name>/<version>/` (model_name and top_k default to the run's params.yaml;
version defaults to the next free integer), then loads it through the TF1 session loader (the path
TF Serving uses) and checks every signature against the in-memory model.
"""

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (params.yaml, model.keras, class_names.txt).")
flags.DEFINE_string("export_base", None, "Base path; the export goes to <export_base>/<model_name>/<version>.")
flags.DEFINE_string("model_name", None, "Model name (default: export.model_name of params.yaml).")
flags.DEFINE_integer("version", None, "Version number (default: next free one).")
flags.DEFINE_string("gallery", None, "Image folder or .npz (embeddings, ids) baked in for the lookup signature.")
flags.DEFINE_integer("top_k", None, "Classes / neighbours returned (default: export.top_k of params.yaml).")
flags.DEFINE_bool("verify", True, "Verify the export through the session loader against the Keras model.")
flags.mark_flags_as_required(["model_dir", "export_base"])


def main(argv):
    del argv
    from finegrain_tf.serving import export

    export_dir = export.export_from_model_dir(FLAGS.model_dir, FLAGS.export_base, model_name=FLAGS.model_name,
                                              version=FLAGS.version, gallery=FLAGS.gallery, top_k=FLAGS.top_k)
    if FLAGS.verify:
        model, _, _ = export.load_model_dir(FLAGS.model_dir)
        report = export.verify_export(export_dir, model)
        logging.info("verified through the session loader: %s", report)
    print(export_dir)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
