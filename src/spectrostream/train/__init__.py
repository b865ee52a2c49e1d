"""Training: data, discriminators, losses, EMA quantizer, the GAN loop, checkpoints, export.

Entry points: ``spectrostream train`` / ``spectrostream export`` (see ``train/cli.py``) and
``spectrostream.train.loop.train(config, run_dir)``.
"""
