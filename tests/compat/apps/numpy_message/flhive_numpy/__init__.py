"""flhive-numpy: a Flower / NumPy app."""
