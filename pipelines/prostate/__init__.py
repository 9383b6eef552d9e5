"""The ``prostate`` task: PI-RADS v2 zones (PZ, TZ, DPU, AFS) on axial T2w MRI, dual-path CNN (Das et al. 2023)."""
