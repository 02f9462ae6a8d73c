"""Everything that reads a trained model: `distnet eval`, `distnet noise`, the assessment (confusion matrix,
per-class scores, calibration) and `load_trained`, the one way to load a checkpoint for use."""
