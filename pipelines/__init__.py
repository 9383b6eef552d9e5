"""Per-task pipelines (data, transforms, training, inference, explanation) built on ``models``."""
