"""LungCAM model package: config, network, checkpoints, image input and the predictor."""
