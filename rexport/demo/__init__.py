"""The embedded default: ResNet-20 trained on scikit-learn's digits."""
