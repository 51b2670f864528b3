"""Data shipped with the package: public request traces (traces/, with SOURCE.md)."""
