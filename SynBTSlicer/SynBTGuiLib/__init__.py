"""Qt helpers of the SynBT module (not a module of their own: Slicer scans only top-level .py files)."""
