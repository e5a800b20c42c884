"""flhive-sklearn: a Flower / scikit-learn app."""
