"""A federated regression example: scikit-learn's SGDRegressor on the diabetes data, run by fedhive."""
