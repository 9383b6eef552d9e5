"""The ``breakhis`` task: EfficientNet on BreaKHis breast histopathology (Behzadpour et al. 2024)."""
