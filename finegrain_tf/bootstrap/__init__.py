"""finegrain_tf.bootstrap: dataset bootstrapping rounds with humans in the loop (seed 000 §2.2).

  pool      candidate pools from a folder or a manifest, split into the rounds' subsets
  scoring   resumable, shardable scoring of a pool with a trained classifier
  manifest  path,label dataset manifests (S_i) read by finegrain-train
  rounds    the rounds: train on S ∪ H, score, queue for review, grow S and H (state per round)
  simulate  a synthetic seed set / pool with distractors and a simulated labeler
  main      the `finegrain-bootstrap` binary
"""
