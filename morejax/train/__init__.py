"""Training: experiment configs, the mesh, the model and data of a run, compiled steps,
the loop, evaluation and checkpoints. `morejax.train.loop.train` runs a whole experiment."""
