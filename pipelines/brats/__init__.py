"""The ``brats`` task: nested glioma regions (WT ⊃ TC ⊃ ET) with a multi-level activation (Hu et al. 2018)."""
